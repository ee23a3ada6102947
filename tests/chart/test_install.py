"""The chart installed on a real cluster (install, helm test, upgrade, uninstall). Runs
only when WORKPOOL_CHART_KUBECONFIG names the cluster's kubeconfig (an absolute path):
wiring it to the test cluster comes with the real node (issue #10, "Installed for real
in CI"). Until then it is skipped, also with CI=true, because no cluster is a missing
setting of the run rather than a missing component."""

from __future__ import annotations

import os

import pytest

from conftest import MATRIX

KUBECONFIG = os.environ.get("WORKPOOL_CHART_KUBECONFIG")

pytestmark = pytest.mark.skipif(
    not KUBECONFIG, reason="WORKPOOL_CHART_KUBECONFIG is not set: no cluster to install the chart into"
)


def test_install_test_upgrade_uninstall_with_defaults():
    from install import install_cycle

    assert os.path.isabs(KUBECONFIG), "WORKPOOL_CHART_KUBECONFIG must be an absolute path"
    rep = install_cycle(KUBECONFIG, namespace="workpool-chart-e2e")
    assert rep.steps[-1].endswith("nothing left but the CRD (kept)")
    assert any("PASS: the WorkPool's worker ran the task" in log for log in rep.test_logs), rep.test_logs


def test_install_ha_operator_without_persistence():
    from install import install_cycle

    # The same release name and namespace as above: the CRD kept by the first uninstall
    # carries that release's ownership annotations, and Helm adopts it only for the same
    # release (any other release would have to set crds.install=false).
    values = {**MATRIX["ha-operator"], "redis": {"persistence": {"enabled": False}}}
    rep = install_cycle(KUBECONFIG, namespace="workpool-chart-e2e", values=values,
                        upgrade_values={"operator": {"replicas": 2}})
    assert rep.steps[-1].endswith("nothing left but the CRD (kept)")
