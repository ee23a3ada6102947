"""The chart installed for real on the test cluster (real control plane and real node,
started by scripts/chart-test.sh): install with default values into a namespace that
enforces the `restricted` Pod Security Standard, the operator running from the chart's
Deployment with in-cluster credentials and the chart's RBAC only, the bundled Redis
(StatefulSet, PVC on `standard`), `kubectl apply -f examples/` and tasks drained, `helm
test`, `helm upgrade` with changed values, `helm test` again, `helm uninstall` keeping the
Redis PVC (retainOnUninstall, the default) and nothing else but the CRD. The HA mode
(redis.ha.enabled: primary, replicas, sentinels) installs the same way and loses no
confirmed task when its primary's pod is deleted during a drain (ha.py). With CI=true a
cluster that could not start fails these tests."""

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


def test_install_ha_redis_and_delete_the_primary_during_a_drain():
    kubeconfig = need_cluster()
    from ha import ha_failover
    from install import install_cycle

    rep = install_cycle(kubeconfig, namespace=CHART_NAMESPACE, values={"redis": {"ha": {"enabled": True}}},
                        while_installed=lambda k, r: ha_failover(k, r, CHART_NAMESPACE, "workpool"),
                        timeout=420)
    assert any("all 300 confirmed tasks done" in s for s in rep.steps), rep.steps
    assert any("rejoined as a replica" in s for s in rep.steps), rep.steps
    assert any("the Redis PVCs were kept" in s for s in rep.steps), rep.steps
    assert rep.steps[-1].endswith("nothing left but the CRD (kept)")
