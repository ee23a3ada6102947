//! The controllers a control plane runs besides the apiserver, as far as the API can
//! see them: the garbage collector (owner references: background cascade, foreground
//! via the `foregroundDeletion` finalizer, orphaning via the `orphan` finalizer) and the
//! namespace controller (deletes a terminating namespace's content, then the namespace).

use super::store::{
    CRD_CLEANUP_FINALIZER, DeleteOpts, Key, State, name_of, namespace_of, set_condition, uid_of,
};
use serde_json::{Value, json};
use std::collections::HashMap;

fn owner_refs(o: &Value) -> Vec<Value> {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn has_finalizer(o: &Value, f: &str) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn deleting(o: &Value) -> bool {
    o.pointer("/metadata/deletionTimestamp").is_some()
}

/// One pass of every controller. Returns whether anything changed.
pub fn run_once(st: &mut State) -> bool {
    let before = st.rv;
    namespaces(st);
    crd_cleanup(st);
    garbage_collect(st);
    st.rv != before
}

fn delete_key(st: &mut State, key: &Key, opts: &DeleteOpts) {
    let Some(ri) = st.resource_by_storage(&key.0, &key.1) else {
        return;
    };
    let _ = st.delete(&ri, &key.2, &key.3, opts);
}

fn namespaces(st: &mut State) {
    let terminating: Vec<String> = st
        .objects
        .iter()
        .filter(|((g, r, _, _), o)| g.is_empty() && r == "namespaces" && deleting(o))
        .map(|((_, _, _, n), _)| n.clone())
        .collect();
    for ns in terminating {
        let content: Vec<(Key, bool)> = st
            .objects
            .iter()
            .filter(|((_, _, n, _), _)| *n == ns)
            .map(|(k, o)| (k.clone(), deleting(o)))
            .collect();
        if content.is_empty() {
            st.remove_namespace(&ns);
            continue;
        }
        for (key, already) in content {
            if !already {
                delete_key(st, &key, &DeleteOpts::default());
            }
        }
    }
}

/// The apiextensions finalizer controller: a deleted CRD's instances are deleted (their
/// own finalizers honoured); the CRD stays Terminating (`InstanceDeletionInProgress`)
/// until none remains, then loses its finalizer and goes.
fn crd_cleanup(st: &mut State) {
    let terminating: Vec<(Key, String)> = st
        .objects
        .iter()
        .filter(|((g, r, _, _), o)| {
            g == "apiextensions.k8s.io"
                && r == "customresourcedefinitions"
                && deleting(o)
                && has_finalizer(o, CRD_CLEANUP_FINALIZER)
        })
        .map(|(k, o)| (k.clone(), name_of(o).to_string()))
        .collect();
    for (key, name) in terminating {
        let Some(cr) = st.crds.get(&name).cloned() else {
            st.remove_finalizer(&key, CRD_CLEANUP_FINALIZER);
            continue;
        };
        let instances: Vec<(Key, bool)> = st
            .objects
            .iter()
            .filter(|((g, r, _, _), _)| *g == cr.storage_group && *r == cr.resource)
            .map(|(k, o)| (k.clone(), deleting(o)))
            .collect();
        if instances.is_empty() {
            st.remove_finalizer(&key, CRD_CLEANUP_FINALIZER);
            continue;
        }
        if let Some(mut crd) = st.objects.get(&key).cloned() {
            set_condition(
                &mut crd,
                json!({"type": "Terminating", "status": "True",
                       "reason": "InstanceDeletionInProgress",
                       "message": "CustomResource deletion is in progress"}),
            );
            st.controller_write(&key, crd);
        }
        for (k, already) in instances {
            if !already {
                let _ = st.delete(&cr, &k.2, &k.3, &DeleteOpts::default());
            }
        }
    }
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// The garbage collector's `attemptToDeleteItem`: each owner reference is *dangling* (no
/// object of that group, kind, namespace and name with that uid), *waiting* (the owner is
/// being deleted in the foreground) or *solid*. An object with a solid owner is kept and
/// loses its dangling and waiting references; one without is deleted (in the foreground
/// when it waits on a foreground owner and has dependents itself). A reference whose kind
/// is not served is left alone (the real collector retries its REST mapping).
fn garbage_collect(st: &mut State) {
    let by_uid: HashMap<String, (Key, Value)> = st
        .objects
        .iter()
        .map(|(k, o)| (uid_of(o).to_string(), (k.clone(), o.clone())))
        .collect();
    let referenced: std::collections::HashSet<String> = st
        .objects
        .values()
        .flat_map(owner_refs)
        .filter_map(|r| r["uid"].as_str().map(str::to_string))
        .collect();
    let mut to_delete: Vec<(Key, Option<String>)> = Vec::new();
    let mut to_orphan: Vec<(Key, String)> = Vec::new();
    let mut to_unlink: Vec<(Key, Vec<String>)> = Vec::new();
    for (key, o) in st.objects.iter() {
        let refs = owner_refs(o);
        if refs.is_empty() {
            continue;
        }
        let (mut solid, mut dangling, mut waiting) = (0, Vec::new(), Vec::new());
        for r in &refs {
            let uid = r["uid"].as_str().unwrap_or_default();
            let av = r["apiVersion"].as_str().unwrap_or_default();
            let kind = r["kind"].as_str().unwrap_or_default();
            if st.resource_for_kind(av, kind).is_none() {
                solid += 1;
                continue;
            }
            let owner = by_uid.get(uid).filter(|(ok, ov)| {
                (ok.2.is_empty() || ok.2 == key.2)
                    && name_of(ov) == r["name"].as_str().unwrap_or_default()
                    && ov["kind"].as_str() == Some(kind)
                    && group_of(ov["apiVersion"].as_str().unwrap_or_default()) == group_of(av)
            });
            match owner {
                None => dangling.push(uid.to_string()),
                Some((_, ov)) if deleting(ov) && has_finalizer(ov, "foregroundDeletion") => {
                    waiting.push(uid.to_string());
                }
                Some((_, ov)) => {
                    solid += 1;
                    if deleting(ov) && has_finalizer(ov, "orphan") {
                        to_orphan.push((key.clone(), uid.to_string()));
                    }
                }
            }
        }
        if solid > 0 {
            if !dangling.is_empty() || !waiting.is_empty() {
                to_unlink.push((key.clone(), [dangling, waiting].concat()));
            }
        } else if !deleting(o) {
            let foreground = !waiting.is_empty() && referenced.contains(uid_of(o));
            let policy = if foreground || has_finalizer(o, "foregroundDeletion") {
                "Foreground"
            } else if has_finalizer(o, "orphan") {
                "Orphan"
            } else {
                "Background"
            };
            to_delete.push((key.clone(), Some(policy.into())));
        }
    }
    for (key, prop) in to_delete {
        delete_key(
            st,
            &key,
            &DeleteOpts {
                propagation: prop,
                ..Default::default()
            },
        );
    }
    for (key, uids) in to_unlink {
        if let Some(mut o) = st.objects.get(&key).cloned() {
            let refs: Vec<Value> = owner_refs(&o)
                .into_iter()
                .filter(|r| !uids.iter().any(|u| r["uid"] == u.as_str()))
                .collect();
            o["metadata"]["ownerReferences"] = json!(refs);
            st.controller_write(&key, o);
        }
    }
    for (key, uid) in to_orphan {
        if let Some(mut o) = st.objects.get(&key).cloned() {
            let refs: Vec<Value> = owner_refs(&o)
                .into_iter()
                .filter(|r| r["uid"] != uid.as_str())
                .collect();
            if refs.is_empty() {
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
            } else {
                o["metadata"]["ownerReferences"] = json!(refs);
            }
            st.controller_write(&key, o);
        }
    }
    // Owners waiting on foreground deletion or orphaning whose dependents are done.
    let waiting: Vec<(Key, String, &'static str)> = st
        .objects
        .iter()
        .filter(|(_, o)| deleting(o))
        .flat_map(|(k, o)| {
            let mut v = Vec::new();
            for f in ["foregroundDeletion", "orphan"] {
                if has_finalizer(o, f) {
                    v.push((k.clone(), uid_of(o).to_string(), f));
                }
            }
            v
        })
        .collect();
    for (key, uid, fin) in waiting {
        let still = st.objects.iter().any(|(k, o)| {
            (key.2.is_empty() || k.2 == key.2 || namespace_of(o) == key.2)
                && owner_refs(o).iter().any(|r| r["uid"] == uid.as_str())
        });
        if !still {
            st.remove_finalizer(&key, fin);
        }
    }
}
