//! Field sets (structured-merge-diff `fieldpath.Set`), the FieldsV1 encoding, comparison and merge of typed values.

use super::*;

// ---------------------------------------------------------------------------------------
// Field sets (structured-merge-diff `fieldpath.Set`) and the FieldsV1 encoding
// ---------------------------------------------------------------------------------------

/// A set of field paths. Path elements are kept in their FieldsV1 spelling:
/// `f:<name>`, `k:<json object of the key fields>`, `v:<json value>`, `i:<index>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FieldSet {
    pub(super) member: bool,
    pub(super) children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub(super) fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub(super) fn has(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    pub(super) fn union_with(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union_with(c);
        }
    }

    /// Members of `self` that are not members of `other` (not recursive: a member of
    /// `other` does not remove its descendants, as in `Set.Difference`).
    pub(super) fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    pub(super) fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// `EnsureNamedFieldsAreMembers`, taking every field name as a named field (we have
    /// no schema to tell struct fields from map keys).
    pub(super) fn ensure_named(&self) -> FieldSet {
        let mut out = FieldSet {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let mut e = c.ensure_named();
            if k.starts_with("f:") && !e.is_empty() {
                e.member = true;
            }
            out.children.insert(k.clone(), e);
        }
        out
    }

    pub(super) fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        self.collect_members(&mut prefix, &mut out);
        out
    }

    pub(super) fn collect_members(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect_members(prefix, out);
            prefix.pop();
        }
    }

    pub(super) fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    pub(super) fn from_fields_v1(v: &Value, depth: usize) -> Result<FieldSet, String> {
        if depth > MAX_DEPTH {
            return Err("fieldsV1 nested too deeply".into());
        }
        let Value::Object(m) = v else {
            return Err(format!("expected an object in fieldsV1, got {v}"));
        };
        let mut out = FieldSet::default();
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            let valid = ["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p));
            if !valid {
                return Err(format!("unknown path element {k:?} in fieldsV1"));
            }
            let mut child = FieldSet::from_fields_v1(c, depth + 1)?;
            if c.as_object().is_some_and(Map::is_empty) {
                child.member = true;
            }
            out.children.insert(k.clone(), child);
        }
        Ok(out)
    }
}

/// `fieldpath.Path.String()`: `.spec.containers[name="c"].image`, `.metadata.finalizers[="x"]`.
pub(super) fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(name) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(name);
        } else if let Some(key) = pe.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(key) {
                Ok(m) => {
                    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    s.push('[');
                    s.push_str(&parts.join(","));
                    s.push(']');
                }
                Err(_) => s.push_str(&format!("[{key}]")),
            }
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Defaults of list-map key fields that clients commonly omit (SMD fills them from the
/// schema): the `protocol` of container and service ports.
pub(super) fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::String("TCP".into()))
}

/// The path element of one list item, or None when the item does not fit the list type.
pub(super) fn item_pe(item: &Value, lt: &ListType) -> Option<String> {
    match lt {
        ListType::Atomic => None,
        ListType::Set => match item {
            Value::Array(_) | Value::Object(_) | Value::Null => None,
            v => Some(format!("v:{v}")),
        },
        ListType::Map(keys) => {
            let Value::Object(m) = item else {
                return None;
            };
            // Missing key fields take their default, or are left out of the key (as
            // structured-merge-diff does); an item with no key field at all is invalid.
            let mut k = Map::new();
            for key in keys {
                let v = match m.get(key) {
                    Some(Value::Null) | None => key_default(key),
                    Some(v) => Some(v.clone()),
                };
                if let Some(v) = v {
                    k.insert(key.clone(), v);
                }
            }
            if k.is_empty() {
                return None;
            }
            Some(format!("k:{}", Value::Object(k)))
        }
    }
}

/// Path elements of all items, or None (treat the list as atomic) if any item does not
/// fit or two items share a key.
pub(super) fn list_pes(items: &[Value], lt: &ListType) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let pe = item_pe(it, lt)?;
        if !seen.insert(pe.clone()) {
            return None;
        }
        out.push(pe);
    }
    Some(out)
}

/// What the SSA walkers know of a kind: its lists (metadata lists answered for every
/// kind, custom resources included) and, for built-in kinds, which maps and list items
/// are atomic (`+structType=atomic` / `+mapType=atomic`).
pub(super) struct Schema<'a> {
    pub(super) lists: &'a dyn ListSemantics,
    pub(super) kind: String,
    pub(super) builtin: bool,
}

impl<'a> Schema<'a> {
    pub(super) fn new(lists: &'a dyn ListSemantics, obj: &Value) -> Self {
        let av = obj_str(obj, "apiVersion");
        Schema {
            lists,
            kind: obj_str(obj, "kind").to_string(),
            builtin: is_builtin_group(av),
        }
    }

    /// Is the map at `names` (or, with `item`, each item of the list at `names`) atomic?
    pub(super) fn atomic(&self, names: &[String], item: bool) -> bool {
        let p: Vec<&str> = names.iter().map(String::as_str).collect();
        if item && p == ["metadata", "ownerReferences"] {
            return true;
        }
        if !self.builtin {
            return false;
        }
        let pod_rel = |rel: &[&str]| -> bool {
            match rel {
                ["nodeSelector"] => !item,
                ["imagePullSecrets"] => item,
                [
                    "containers" | "initContainers" | "ephemeralContainers",
                    "env",
                    "valueFrom",
                    "configMapKeyRef" | "secretKeyRef" | "fieldRef" | "resourceFieldRef",
                ] => !item,
                _ => false,
            }
        };
        if let Some(prefix) = pod_template_prefix(&self.kind)
            && p.len() > prefix.len() + 1
            && p[..prefix.len()] == *prefix
            && p[prefix.len()] == "spec"
        {
            return pod_rel(&p[prefix.len() + 1..]);
        }
        match (self.kind.as_str(), p.as_slice()) {
            ("Pod", ["spec", rel @ ..]) => pod_rel(rel),
            (
                "Deployment"
                | "StatefulSet"
                | "DaemonSet"
                | "ReplicaSet"
                | "Job"
                | "PodDisruptionBudget",
                ["spec", "selector"],
            ) => !item,
            ("Service" | "ReplicationController", ["spec", "selector"]) => !item,
            _ => false,
        }
    }
}

impl ListSemantics for Schema<'_> {
    fn list_type(&self, path: &[String]) -> ListType {
        if let [first, rest @ ..] = path
            && first == "metadata"
        {
            let rel: Vec<&str> = rest.iter().map(String::as_str).collect();
            if let Some(t) = meta_list(&rel) {
                return t;
            }
        }
        self.lists.list_type(path)
    }
}

pub(super) fn is_builtin_group(api_version: &str) -> bool {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io")
}

/// `TypedValue.ToFieldSet` of an applied configuration.
pub(super) fn to_field_set(v: &Value, lists: &Schema<'_>) -> Result<FieldSet, PatchError> {
    let mut set = FieldSet::default();
    let mut names = Vec::new();
    let mut path = Vec::new();
    fs_walk(v, &mut names, &mut path, lists, &mut set, 0)?;
    Ok(set)
}

pub(super) fn fs_walk(
    v: &Value,
    names: &mut Vec<String>,
    path: &mut Vec<String>,
    lists: &Schema<'_>,
    set: &mut FieldSet,
    depth: usize,
) -> Result<(), PatchError> {
    if depth > MAX_DEPTH {
        return Err(bad("object is nested too deeply"));
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                names.push(k.clone());
                path.push(format!("f:{k}"));
                let empty_map = c.as_object().is_some_and(Map::is_empty);
                if c.is_null() || empty_map || (c.is_object() && lists.atomic(names, false)) {
                    set.insert(path);
                } else {
                    fs_walk(c, names, path, lists, set, depth + 1)?;
                }
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) => {
            let lt = lists.list_type(names);
            if matches!(lt, ListType::Atomic) {
                set.insert(path);
                return Ok(());
            }
            let mut seen = BTreeSet::new();
            for it in items {
                let pe = item_pe(it, &lt).ok_or_else(|| {
                    bad(format!(
                        "{}: element {} does not fit the list type ({})",
                        path_string(path),
                        it,
                        describe_list_type(&lt)
                    ))
                })?;
                if !seen.insert(pe.clone()) {
                    return Err(bad(format!(
                        "{}: duplicate entries for key {}",
                        path_string(path),
                        path_string(std::slice::from_ref(&pe))
                    )));
                }
                path.push(pe);
                set.insert(path);
                if it.is_object() && !lists.atomic(names, true) {
                    fs_walk(it, names, path, lists, set, depth + 1)?;
                }
                path.pop();
            }
        }
        _ => set.insert(path),
    }
    Ok(())
}

pub(super) fn describe_list_type(lt: &ListType) -> String {
    match lt {
        ListType::Atomic => "atomic".into(),
        ListType::Set => "set of scalars".into(),
        ListType::Map(keys) => format!("map with keys {}", keys.join(",")),
    }
}

/// `typed.Comparison`.
#[derive(Default, Debug)]
pub(super) struct Comparison {
    pub(super) added: FieldSet,
    pub(super) modified: FieldSet,
    pub(super) removed: FieldSet,
}

pub(super) fn compare(l: Option<&Value>, r: Option<&Value>, lists: &Schema<'_>) -> Comparison {
    let mut cmp = Comparison::default();
    let mut names = Vec::new();
    let mut path = Vec::new();
    cmp_walk(l, r, &mut names, &mut path, lists, &mut cmp, 0);
    cmp
}

pub(super) fn cmp_leaf(
    l: Option<&Value>,
    r: Option<&Value>,
    path: &[String],
    cmp: &mut Comparison,
) {
    if path.is_empty() {
        return;
    }
    match (l, r) {
        (None, Some(_)) => cmp.added.insert(path),
        (Some(_), None) => cmp.removed.insert(path),
        (Some(a), Some(b)) if a != b => cmp.modified.insert(path),
        _ => {}
    }
}

pub(super) fn cmp_walk(
    l: Option<&Value>,
    r: Option<&Value>,
    names: &mut Vec<String>,
    path: &mut Vec<String>,
    lists: &Schema<'_>,
    cmp: &mut Comparison,
    depth: usize,
) {
    if l.is_none() && r.is_none() {
        return;
    }
    if depth > MAX_DEPTH {
        cmp_leaf(l, r, path, cmp);
        return;
    }
    // A null on one side is a wildcard taking the other side's shape (present, empty),
    // as in structured-merge-diff: typed objects serialise `containers: null`.
    let all = |f: fn(&Value) -> bool| {
        let ok = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || f(v));
        ok(l) && ok(r) && (l.is_some_and(f) || r.is_some_and(f))
    };
    if all(Value::is_object) {
        let lm = l.and_then(Value::as_object);
        let rm = r.and_then(Value::as_object);
        let both_empty = lm.is_none_or(Map::is_empty) && rm.is_none_or(Map::is_empty);
        let atomic_item = path.last().is_some_and(|p| !p.starts_with("f:"));
        if both_empty || lists.atomic(names, atomic_item) {
            cmp_leaf(l, r, path, cmp);
            return;
        }
        let keys: BTreeSet<&String> = lm
            .into_iter()
            .flat_map(Map::keys)
            .chain(rm.into_iter().flat_map(Map::keys))
            .collect();
        for k in keys {
            names.push(k.clone());
            path.push(format!("f:{k}"));
            cmp_walk(
                lm.and_then(|m| m.get(k)),
                rm.and_then(|m| m.get(k)),
                names,
                path,
                lists,
                cmp,
                depth + 1,
            );
            path.pop();
            names.pop();
        }
    } else if all(Value::is_array) {
        let la: &[Value] = l.and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let ra: &[Value] = r.and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let lt = lists.list_type(names);
        let mergeable = !matches!(lt, ListType::Atomic) && (!la.is_empty() || !ra.is_empty());
        let pes = mergeable
            .then(|| Some((list_pes(la, &lt)?, list_pes(ra, &lt)?)))
            .flatten();
        let Some((lp, rp)) = pes else {
            cmp_leaf(l, r, path, cmp);
            return;
        };
        for (i, pe) in lp.iter().enumerate() {
            let rv = rp.iter().position(|x| x == pe).map(|j| &ra[j]);
            path.push(pe.clone());
            cmp_walk(Some(&la[i]), rv, names, path, lists, cmp, depth + 1);
            path.pop();
        }
        for (j, pe) in rp.iter().enumerate() {
            if !lp.contains(pe) {
                path.push(pe.clone());
                cmp_walk(None, Some(&ra[j]), names, path, lists, cmp, depth + 1);
                path.pop();
            }
        }
    } else {
        cmp_leaf(l, r, path, cmp);
        return;
    }
    if !path.is_empty() {
        if l.is_none() {
            cmp.added.insert(path);
        } else if r.is_none() {
            cmp.removed.insert(path);
        }
    }
}

/// `TypedValue.Merge` (live ⊕ applied config): maps merge, atomic lists are replaced,
/// sets and map lists merge per item keeping live-only items in place and applied items
/// in applied order. A `null` in the config removes a scalar or atomic field and leaves
/// a map or granular list as it is.
pub(super) fn ssa_merge(
    l: Option<&Value>,
    r: &Value,
    names: &mut Vec<String>,
    lists: &Schema<'_>,
    depth: usize,
    item: bool,
) -> Value {
    match (l, r) {
        (Some(Value::Object(lm)), Value::Object(rm))
            if depth <= MAX_DEPTH && !lists.atomic(names, item) =>
        {
            let mut out = lm.clone();
            for (k, rv) in rm {
                if rv.is_null() {
                    // As structured-merge-diff: a null map or granular list in the config
                    // claims the field but keeps its live content; a null scalar or
                    // atomic value clears it.
                    names.push(k.clone());
                    let keep = match lm.get(k) {
                        Some(Value::Object(_)) => !lists.atomic(names, false),
                        Some(Value::Array(_)) => {
                            !matches!(lists.list_type(names), ListType::Atomic)
                        }
                        _ => false,
                    };
                    names.pop();
                    if !keep {
                        out.remove(k);
                    }
                    continue;
                }
                names.push(k.clone());
                let merged = ssa_merge(lm.get(k), rv, names, lists, depth + 1, false);
                names.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Some(Value::Array(la)), Value::Array(ra)) if depth <= MAX_DEPTH => {
            let lt = lists.list_type(names);
            match (list_pes(la, &lt), list_pes(ra, &lt)) {
                (Some(lp), Some(rp)) if !matches!(lt, ListType::Atomic) => {
                    Value::Array(merge_list_items(la, &lp, ra, &rp, names, lists, depth))
                }
                _ => without_nulls(r),
            }
        }
        _ => without_nulls(r),
    }
}

pub(super) fn without_nulls(v: &Value) -> Value {
    let mut v = v.clone();
    discard_nulls(&mut v);
    v
}

/// The list merge of structured-merge-diff (`mergingWalker.visitListItems`).
pub(super) fn merge_list_items(
    la: &[Value],
    lp: &[String],
    ra: &[Value],
    rp: &[String],
    names: &mut Vec<String>,
    lists: &Schema<'_>,
    depth: usize,
) -> Vec<Value> {
    let lidx: BTreeMap<&String, usize> = lp.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let ridx: BTreeMap<&String, usize> = rp.iter().enumerate().map(|(i, p)| (p, i)).collect();
    let shared: Vec<&String> = rp.iter().filter(|p| lidx.contains_key(p)).collect();
    let mut next_shared = 0usize;
    let mut merged_rhs: BTreeSet<&String> = BTreeSet::new();
    let mut out = Vec::with_capacity(la.len() + ra.len());
    let (mut li, mut ri) = (0usize, 0usize);
    while li < la.len() || ri < ra.len() {
        if li < la.len() && ri < ra.len() {
            if lp[li] == rp[ri] {
                merged_rhs.insert(&rp[ri]);
                out.push(ssa_merge(
                    Some(&la[li]),
                    &ra[ri],
                    names,
                    lists,
                    depth + 1,
                    true,
                ));
                if shared.get(next_shared) == Some(&&rp[ri]) {
                    next_shared += 1;
                }
                li += 1;
                ri += 1;
                continue;
            }
            if ridx.contains_key(&lp[li]) && shared.get(next_shared).is_some_and(|s| **s != lp[li])
            {
                li += 1;
                continue;
            }
        }
        if li < la.len() {
            if !ridx.contains_key(&lp[li]) {
                out.push(la[li].clone());
                li += 1;
                continue;
            }
            if merged_rhs.contains(&lp[li]) {
                li += 1;
                continue;
            }
        }
        if ri < ra.len() {
            merged_rhs.insert(&rp[ri]);
            let lchild = lidx.get(&rp[ri]).map(|&i| &la[i]);
            out.push(ssa_merge(lchild, &ra[ri], names, lists, depth + 1, true));
            if shared.get(next_shared) == Some(&&rp[ri]) {
                next_shared += 1;
            }
            ri += 1;
        } else {
            li += 1;
        }
    }
    out
}

/// Removes the value at `path` (FieldsV1 path elements) from `v`, if present.
pub(super) fn remove_path(
    v: &mut Value,
    path: &[String],
    names: &mut Vec<String>,
    lists: &Schema<'_>,
) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(name) = first.strip_prefix("f:") {
        let Value::Object(m) = v else {
            return;
        };
        if rest.is_empty() {
            m.remove(name);
        } else if let Some(c) = m.get_mut(name) {
            names.push(name.to_string());
            remove_path(c, rest, names, lists);
            names.pop();
        }
        return;
    }
    let Value::Array(items) = v else {
        return;
    };
    let idx = if let Some(i) = first.strip_prefix("i:") {
        i.parse::<usize>().ok().filter(|i| *i < items.len())
    } else {
        let lt = lists.list_type(names);
        items
            .iter()
            .position(|it| item_pe(it, &lt).as_deref() == Some(first.as_str()))
    };
    if let Some(i) = idx {
        if rest.is_empty() {
            items.remove(i);
        } else {
            remove_path(&mut items[i], rest, names, lists);
        }
    }
}
