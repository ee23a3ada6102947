"""values.schema.json refuses bad values, and says which key and why."""

from __future__ import annotations

import json

import pytest

from conftest import CHART, MATRIX, NAMESPACE, helm, render

# (values, substrings the error must contain)
BAD = {
    "typo at the top": ({"operater": {"replicas": 2}}, ["additional properties 'operater' not allowed"]),
    "typo inside": ({"redis": {"persistance": {"enabled": False}}}, ["/redis", "'persistance' not allowed"]),
    "zero operator replicas": ({"operator": {"replicas": 0}}, ["/operator/replicas", "minimum"]),
    "replicas as a string": ({"operator": {"replicas": "2"}}, ["/operator/replicas", "integer"]),
    "unknown log format": ({"operator": {"logFormat": "yaml"}}, ["/operator/logFormat"]),
    "bad pull policy": ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, ["/operator/image/pullPolicy"]),
    "bad digest": ({"worker": {"image": {"digest": "latest"}}}, ["/worker/image/digest"]),
    "root operator": ({"operator": {"podSecurityContext": {"runAsNonRoot": False}}},
                      ["/operator/podSecurityContext/runAsNonRoot"]),
    "privilege escalation": (
        {"redis": {"securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"drop": ["ALL"]}}}},
        ["/redis/securityContext/allowPrivilegeEscalation", "false"],
    ),
    "capabilities not dropped": (
        {"operator": {"securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["NET_RAW"]}}}},
        ["/operator/securityContext/capabilities/drop"],
    ),
    "bad quantity": ({"redis": {"persistence": {"size": "lots"}}}, ["/redis/persistence/size"]),
    "bad resources": ({"operator": {"resources": {"limits": {"memory": "1 gig"}}}}, ["/operator/resources/limits/memory"]),
    "bad redis url": ({"redis": {"enabled": False}, "externalRedis": {"url": "http://redis:6379"}}, ["/externalRedis/url"]),
    "external and bundled redis": ({"externalRedis": {"url": "redis://x:6379"}}, ["/externalRedis/url"]),
    "secret without key": ({"redis": {"enabled": False}, "externalRedis": {"existingSecret": {"name": "s"}}},
                           ["/externalRedis/existingSecret"]),
    "bad appendfsync": ({"redis": {"appendfsync": "sometimes"}}, ["/redis/appendfsync"]),
    "bad maxmemory": ({"redis": {"maxmemory": "half"}}, ["/redis/maxmemory"]),
    "password with URL-unsafe characters": ({"redis": {"auth": {"password": "a@b/c"}}}, ["/redis/auth/password"]),
    "bad scrape interval": ({"metrics": {"serviceMonitor": {"interval": "often"}}}, ["/metrics/serviceMonitor/interval"]),
    "bad label value": ({"metrics": {"podMonitor": {"additionalLabels": {"release": 1}}}},
                        ["/metrics/podMonitor/additionalLabels/release"]),
    "test timeout too short": ({"tests": {"timeoutSeconds": 1}}, ["/tests/timeoutSeconds"]),
    "crds.install not a bool": ({"crds": {"install": "yes"}}, ["/crds/install", "boolean"]),
    "bad fullname": ({"fullnameOverride": "Bad_Name"}, ["/fullnameOverride"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_values_are_refused_with_the_key(case):
    h = helm()
    values, expected = BAD[case]
    with h.Chart.load(str(CHART)) as chart:
        with pytest.raises(h.HelmValuesError) as err:
            chart.validate_schema(values)
    msg = str(err.value)
    for part in expected:
        assert part in msg, f"{case}: {part!r} not in the message:\n{msg}"
    # and an install (render) refuses them too
    with pytest.raises(h.HelmError):
        render(values)


@pytest.mark.parametrize("key", MATRIX)
def test_matrix_values_pass_the_schema(key):
    h = helm()
    with h.Chart.load(str(CHART)) as chart:
        chart.validate_schema(MATRIX[key])


def test_defaults_pass_and_every_default_key_is_in_the_schema():
    """values.yaml and the schema describe the same keys (no key the schema forgot)."""
    h = helm()
    schema = json.loads((CHART / "values.schema.json").read_text())
    with h.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        defaults = chart.values

    def walk(values, node, path):
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        props = node.get("properties")
        if not isinstance(values, dict) or props is None:
            return
        for k, v in values.items():
            if node.get("additionalProperties") is not False and k not in props:
                continue  # an open object (e.g. a securityContext passed through)
            assert k in props, f"{path}{k} is in values.yaml but not in values.schema.json"
            walk(v, props[k], f"{path}{k}.")

    walk(defaults, schema, "")


def test_template_level_checks_explain_themselves():
    h = helm()
    with pytest.raises(h.HelmError, match="set externalRedis.url or externalRedis.existingSecret"):
        render({"redis": {"enabled": False}})
    with pytest.raises(h.HelmError, match="the helm test's WorkPool would never be reconciled"):
        render({"operator": {"watchNamespace": "jobs"}})
    assert render({"operator": {"watchNamespace": NAMESPACE}}).of("WorkPool"), "the release namespace itself is fine"
    with pytest.raises(h.HelmError, match="serviceAccount.name is required"):
        render({"serviceAccount": {"create": False}})
