//! Writes that change only `metadata.managedFields` are real writes, as in the apiserver
//! (kubectl relies on it to move ownership from client-side to server-side apply); a
//! write that only refreshes a managedFields timestamp is a no-op.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use workpool_tests::cluster::TestCluster;

fn managers(cm: &ConfigMap) -> Vec<String> {
    cm.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}

#[tokio::test]
async fn managed_fields_only_change_is_persisted_and_timestamp_only_is_not() {
    let cluster = TestCluster::start().await.expect("test cluster starts");
    // Its own namespace.
    let api: Api<ConfigMap> = Api::namespaced(cluster.client(), cluster.namespace());
    let create = PostParams {
        field_manager: Some("creator".into()),
        ..Default::default()
    };
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owned"}, "data": {"k": "v"}}))
            .expect("valid configmap");
    let created = api.create(&create, &cm).await.expect("created");
    assert_eq!(managers(&created), vec!["creator".to_string()]);

    // Same object, same ownership: the apiserver answers without a new resourceVersion.
    let same = api
        .replace(
            "owned",
            &PostParams {
                field_manager: Some("creator".into()),
                ..Default::default()
            },
            &created,
        )
        .await
        .expect("no-op replace");
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );

    // Only the managedFields change (ownership handed to another manager): persisted.
    let mut handed = created.clone();
    for entry in handed.metadata.managed_fields.iter_mut().flatten() {
        entry.manager = Some("new-owner".into());
    }
    let after = api
        .replace("owned", &PostParams::default(), &handed)
        .await
        .expect("ownership-only replace");
    assert_ne!(
        after.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(managers(&after), vec!["new-owner".to_string()]);
    let read = api.get("owned").await.expect("get");
    assert_eq!(managers(&read), vec!["new-owner".to_string()]);
}
