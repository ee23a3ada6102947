"""The chart installed for real on the test cluster (real control plane and real node,
started by scripts/chart-test.sh): install with default values into a namespace that
enforces the `restricted` Pod Security Standard, the operator running from the chart's
Deployment with in-cluster credentials and the chart's RBAC only, the bundled Redis
(StatefulSet, PVC on `standard`), `kubectl apply -f examples/` and tasks drained, `helm
test`, `helm upgrade` with changed values, `helm test` again, `helm uninstall` leaving
nothing but the CRD. With CI=true a cluster that could not start fails these tests."""

from __future__ import annotations

from conftest import CHART_NAMESPACE, MATRIX, need_cluster


def test_install_test_upgrade_uninstall_with_defaults(install_report):
    rep = install_report
    assert rep.steps[-1].endswith("nothing left but the CRD (kept)"), rep.steps
    assert any("PASS: the WorkPool's worker ran the task" in log for log in rep.test_logs), rep.test_logs
    assert any("the generated Redis password survived the upgrade" in s for s in rep.steps), rep.steps
    assert len(rep.test_logs) == 2, "helm test ran before and after the upgrade"


def test_examples_drain_their_tasks(install_report):
    rep = install_report
    assert "examples_error" not in rep.found, rep.found["examples_error"]
    assert rep.found["examples"]["sleepy"] >= 30 and rep.found["examples"]["shout"] >= 30, rep.found["examples"]


def test_install_ha_operator_without_persistence():
    kubeconfig = need_cluster()
    from install import install_cycle

    # The same release name and namespace as above: the CRD kept by the first uninstall
    # carries that release's ownership annotations, and Helm adopts it only for the same
    # release (any other release would have to set crds.install=false).
    values = {**MATRIX["ha-operator"], "redis": {"persistence": {"enabled": False}}}
    rep = install_cycle(kubeconfig, namespace=CHART_NAMESPACE, values=values,
                        upgrade_values={"operator": {"replicas": 2}})
    assert rep.steps[-1].endswith("nothing left but the CRD (kept)")
