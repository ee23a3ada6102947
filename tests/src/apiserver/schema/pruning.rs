//! Pruning of fields the schema does not declare (`x-kubernetes-preserve-unknown-fields`, embedded resources).

use super::*;

// ───────────────────────────── pruning ─────────────────────────────

pub(super) const META_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

pub(super) struct Pruner {
    pub(super) unknown: Vec<String>,
}

impl Pruner {
    pub(super) fn record(&mut self, parent: &str, k: &str) {
        self.unknown.push(child(parent, k));
    }

    pub(super) fn prune(
        &mut self,
        x: &mut Value,
        s: Option<&Value>,
        embedded: bool,
        path: &str,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(s) = s
            && flag(s, "x-kubernetes-preserve-unknown-fields")
        {
            self.skip_prune(x, s, embedded, path, depth);
            return;
        }
        match x {
            Value::Object(m) => {
                let Some(s) = s else {
                    let keys: Vec<String> = m.keys().cloned().collect();
                    for k in keys {
                        self.record(path, &k);
                    }
                    m.clear();
                    return;
                };
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    if embedded && META_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    let prop = props(s).and_then(|p| p.get(&k));
                    let sub = prop.or_else(|| addl(s));
                    match (sub, m.get_mut(&k)) {
                        (Some(sub), Some(v)) => {
                            let emb = flag(sub, "x-kubernetes-embedded-resource");
                            self.prune(v, Some(sub), emb, &child(path, &k), depth + 1);
                        }
                        _ => {
                            if !META_FIELDS.contains(&k.as_str()) || !path.is_empty() {
                                self.record(path, &k);
                            }
                            m.remove(&k);
                        }
                    }
                }
            }
            Value::Array(arr) => {
                let it = s.and_then(items);
                let emb = it.is_some_and(|i| flag(i, "x-kubernetes-embedded-resource"));
                for (i, v) in arr.iter_mut().enumerate() {
                    self.prune(v, it, emb, &subscript(path, &i.to_string()), depth + 1);
                }
            }
            _ => {}
        }
    }

    pub(super) fn skip_prune(
        &mut self,
        x: &mut Value,
        s: &Value,
        embedded: bool,
        path: &str,
        depth: usize,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        match x {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if embedded && META_FIELDS.contains(&k.as_str()) {
                        continue;
                    }
                    if let Some(sub) = props(s).and_then(|p| p.get(k)).or_else(|| addl(s)) {
                        let emb = flag(sub, "x-kubernetes-embedded-resource");
                        self.prune(v, Some(sub), emb, &child(path, k), depth + 1);
                    }
                }
            }
            Value::Array(arr) => {
                if let Some(it) = items(s) {
                    let emb = flag(it, "x-kubernetes-embedded-resource");
                    for (i, v) in arr.iter_mut().enumerate() {
                        self.skip_prune(v, it, emb, &subscript(path, &i.to_string()), depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}
