"""The chart installs the generated CRD (crds/), kept on uninstall, and its copy is current."""

from __future__ import annotations

import copy

import yaml

from conftest import CHART, CI, MATRIX, REPO, missing, render

CHART_CRDS = CHART / "files" / "crds"
GENERATED = REPO / "crds"


def test_chart_crds_are_the_generated_ones():
    """charts/workpool/files/crds/ is byte for byte crds/ (scripts/sync-chart-crds.sh)."""
    generated = sorted(GENERATED.glob("*.yaml")) if GENERATED.is_dir() else []
    if not generated:
        missing("crds/workpool.yaml is not generated yet",
                "cargo run -p workpool-operator --bin crdgen -- crds/workpool.yaml, then scripts/sync-chart-crds.sh")
    copies = sorted(CHART_CRDS.glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in generated], (
        "the chart's CRDs differ from crds/: run scripts/sync-chart-crds.sh"
    )
    for src in generated:
        assert (CHART_CRDS / src.name).read_bytes() == src.read_bytes(), (
            f"charts/workpool/files/crds/{src.name} is stale: run scripts/sync-chart-crds.sh"
        )


def test_rendered_crd_is_the_source_plus_labels_and_keep():
    sources = [d for p in sorted(CHART_CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert sources and all(d["kind"] == "CustomResourceDefinition" for d in sources)
    rendered = render().of("CustomResourceDefinition")
    assert len(rendered) == len(sources)
    for src, doc in zip(sources, rendered):
        got = copy.deepcopy(doc.obj)
        meta = got["metadata"]
        assert meta["annotations"].pop("helm.sh/resource-policy") == "keep"
        if not meta["annotations"]:
            del meta["annotations"]
        labels = meta.pop("labels")
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["app.kubernetes.io/instance"] == "wp"
        src = copy.deepcopy(src)
        src_labels = src["metadata"].pop("labels", {}) or {}
        assert src_labels.items() <= labels.items()
        assert got == src, "the chart must not change the CRD beyond labels and the keep annotation"
    assert {d.obj["metadata"]["name"] for d in rendered} >= {"workpools.workpool.dev"}
    assert not rendered[0].hook, "a CRD must be a normal release object so that upgrades update it"
    assert rendered[0].template.endswith("templates/crds.yaml"), "CRDs live in templates/, not crds/"
    assert not (CHART / "crds").exists(), "crds/ in a chart is never upgraded by Helm"


def test_crds_install_and_keep_switches():
    assert not render(MATRIX["crds-off"]).of("CustomResourceDefinition")
    (crd,) = render(MATRIX["crds-not-kept"]).of("CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd.obj["metadata"].get("annotations") or {})


def test_ci_has_the_generated_crd():
    """The stand-in (tests/fixtures/schema) is for before crdgen exists; CI must ship the real one."""
    fixture = REPO / "tests" / "fixtures" / "schema" / "workpool-crd.yaml"
    chart_copy = CHART_CRDS / "workpool.yaml"
    if fixture.exists() and chart_copy.read_bytes() == fixture.read_bytes():
        msg = "the chart still ships the hand-written schema fixture as its CRD: run scripts/sync-chart-crds.sh"
        if CI:
            raise AssertionError(msg)
        import pytest

        pytest.skip(msg)
