//! The controllers a control plane runs besides the apiserver, as far as the API can
//! see them: the garbage collector (owner references: background cascade, foreground
//! via the `foregroundDeletion` finalizer, orphaning via the `orphan` finalizer) and the
//! namespace controller (deletes a terminating namespace's content, then the namespace).

use super::store::{DeleteOpts, Key, State, name_of, namespace_of, uid_of};
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

fn garbage_collect(st: &mut State) {
    // uid → (key, namespaced?)
    let by_uid: HashMap<String, (Key, Value)> = st
        .objects
        .iter()
        .map(|(k, o)| (uid_of(o).to_string(), (k.clone(), o.clone())))
        .collect();
    let mut to_delete: Vec<(Key, Option<String>)> = Vec::new();
    let mut to_orphan: Vec<(Key, String)> = Vec::new();
    for (key, o) in st.objects.iter() {
        let refs = owner_refs(o);
        if refs.is_empty() {
            continue;
        }
        let mut all_gone = true;
        for r in &refs {
            let uid = r["uid"].as_str().unwrap_or_default();
            let owner = by_uid.get(uid).filter(|(ok, ov)| {
                // The owner must be cluster-scoped or in the dependent's namespace,
                // and match the reference's name.
                (ok.2.is_empty() || ok.2 == key.2)
                    && name_of(ov) == r["name"].as_str().unwrap_or_default()
            });
            match owner {
                None => {}
                Some((_, ov)) => {
                    all_gone = false;
                    if deleting(ov) && has_finalizer(ov, "foregroundDeletion") && !deleting(o) {
                        to_delete.push((key.clone(), Some("Foreground".into())));
                    }
                    if deleting(ov) && has_finalizer(ov, "orphan") {
                        to_orphan.push((key.clone(), uid.to_string()));
                    }
                }
            }
        }
        if all_gone && !deleting(o) {
            to_delete.push((key.clone(), Some("Background".into())));
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
