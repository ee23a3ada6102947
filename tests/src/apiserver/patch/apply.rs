//! Server-side apply.

use super::*;

// ---------------------------------------------------------------------------------------
// Server-side apply
// ---------------------------------------------------------------------------------------

/// Inputs of one server-side apply request.
pub struct ApplyContext<'a> {
    /// `fieldManager` query parameter (required for apply).
    pub manager: &'a str,
    /// `force=true`: take ownership of conflicting fields instead of failing.
    pub force: bool,
    /// `Some("status")` when applying to the status subresource: only `.status` of the
    /// applied config counts. `None` on the main resource: when `status_subresource` is
    /// true, `.status` in the applied config is ignored.
    pub subresource: Option<&'a str>,
    pub status_subresource: bool,
    /// RFC 3339 time stamped into `managedFields[].time`.
    pub now: &'a str,
    pub lists: &'a dyn ListSemantics,
}

/// Metadata the applier cannot set through apply (preconditions and server-set fields).
pub(super) const APPLY_IGNORED_META: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Server-side apply of `applied` onto `live` (None = create). Returns the new object,
/// with `metadata.managedFields` updated (operation `Apply`).
///
/// Follows structured-merge-diff's `Updater.Apply` and the apiserver's field manager:
/// - the applier's set is exactly the fields its config specifies (`ToFieldSet`: scalars,
///   atomic lists whole, set items `v:`, map-list items `k:` and their fields, empty maps),
///   minus `apiVersion`, `kind`, `metadata.{name,namespace,uid,resourceVersion,generation,
///   creationTimestamp,managedFields,selfLink}`;
/// - the config is merged into the live object (maps recursive, lists per `ctx.lists`,
///   metadata finalizers/ownerReferences by their built-in types for every kind);
/// - fields the applier owned before and no longer specifies are removed when no manager
///   (Apply or Update) owns them (prune with named-field membership as upstream);
/// - a field whose value changes (or is added) and is owned by another manager is a
///   conflict (`force` moves ownership instead); unchanged values are shared;
/// - fields removed by the apply are dropped from every manager; empty entries vanish;
/// - an object without managed fields first gets a `before-first-apply` Update entry
///   owning all its fields (as upstream does for objects created before tracking);
/// - `ctx.subresource == Some("status")`: only `apiVersion`, `kind`, `metadata.name/
///   namespace` and `status` of the config are used, entry has `subresource: status`;
///   main resource with `status_subresource`: `status` of the config is ignored;
/// - the applier's `time` is set to `ctx.now` when the object changed or the entry is new.
///
/// Approximations: without a schema every object field counts as a "named field" when
/// pruning, so a map emptied by pruning disappears instead of staying as `{}`; a `null`
/// in the config clears scalars and atomic values only (maps and granular lists keep their
/// content, as upstream); list-map key defaults are known only for `protocol`
/// (`TCP`); the last-applied-configuration annotation is not maintained.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    ctx: &ApplyContext<'_>,
) -> Result<Value, PatchError> {
    let lists = Schema::new(ctx.lists, applied);
    let Value::Object(applied_map) = applied else {
        return Err(bad("the applied configuration must be a JSON object"));
    };
    if ctx.manager.is_empty() {
        return Err(bad(
            "PATCH requests with apply content type must include a fieldManager query parameter",
        ));
    }
    let api_version = match applied_map.get("apiVersion") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(bad(
                "Object 'apiVersion' is missing in the applied configuration",
            ));
        }
    };
    match applied_map.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => return Err(bad("Object 'Kind' is missing in the applied configuration")),
    }
    let mut config = applied_map.clone();
    match config.get_mut("metadata") {
        None => {}
        Some(Value::Object(meta)) => {
            if meta.get("managedFields").is_some_and(|v| !v.is_null()) {
                return Err(bad("metadata.managedFields must be nil"));
            }
            meta.remove("managedFields");
            for k in APPLY_IGNORED_META {
                meta.remove(*k);
            }
        }
        Some(other) => {
            return Err(bad(format!("metadata must be an object, got {other}")));
        }
    }
    if ctx.subresource == Some("status") {
        config.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(Value::Object(meta)) = config.get_mut("metadata") {
            meta.retain(|k, _| k == "name" || k == "namespace");
        }
    } else if ctx.status_subresource {
        config.remove("status");
    }
    let config = Value::Object(config);
    if let Some(l) = live
        && !l.is_object()
    {
        return Err(PatchError::Invalid(
            "the live object is not a JSON object".into(),
        ));
    }

    let config_set = to_field_set(&config, &lists)?;
    let subresource = ctx.subresource.unwrap_or("");
    let live_body = live.map(without_managed_fields);
    let mut entries = match live {
        Some(l) => decode_managed(l.get("metadata").and_then(|m| m.get("managedFields")))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if let (Some(body), true) = (&live_body, entries.is_empty()) {
        let kind = obj_str(body, "kind");
        let av = obj_str(body, "apiVersion");
        let mut empty = typed_skeleton(av, kind).unwrap_or_else(|| Value::Object(Map::new()));
        let mut full = body.clone();
        if let Some(sk) = typed_skeleton(av, kind) {
            fill_skeleton(&mut full, &sk);
            fill_skeleton(&mut empty, &sk);
        }
        let cmp = compare(Some(&empty), Some(&full), &lists);
        let mut set = cmp.added;
        set.union_with(&cmp.modified);
        let set = strip_meta(&set);
        if !set.is_empty() {
            entries.push(ManagedEntry {
                manager: "before-first-apply".into(),
                operation: "Update".into(),
                api_version: av.to_string(),
                time: None,
                subresource: String::new(),
                set,
            });
        }
    }

    let mut names = Vec::new();
    let mut merged = ssa_merge(live_body.as_ref(), &config, &mut names, &lists, 0, false);

    let own_idx = entries
        .iter()
        .position(|e| e.same_key(ctx.manager, "Apply", subresource));
    // Prune what the applier owned before, does not apply now, and nobody else owns.
    if let Some(i) = own_idx {
        // Identity fields are never pruned, even if the config omits them.
        let mut owned = unowned_fields();
        owned.union_with(&config_set);
        for (j, e) in entries.iter().enumerate() {
            if j != i {
                owned.union_with(&e.set);
            }
        }
        let to_remove = entries[i]
            .set
            .ensure_named()
            .difference(&owned.ensure_named());
        for p in to_remove.members() {
            let mut names = Vec::new();
            remove_path(&mut merged, &p, &mut names, &lists);
        }
    }

    // Conflicts and ownership changes, from what the apply changes in the live object.
    let before = live_body
        .clone()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let cmp = compare(Some(&before), Some(&merged), &lists);
    let mut changed = cmp.added.clone();
    changed.union_with(&cmp.modified);
    let mut conflicts: Vec<(ApplyConflict, Vec<String>)> = Vec::new();
    for (j, e) in entries.iter().enumerate() {
        if Some(j) == own_idx {
            continue;
        }
        for p in e.set.intersection(&changed).members() {
            let c = ApplyConflict {
                manager: e.manager.clone(),
                field: path_string(&p),
            };
            conflicts.push((c, p));
        }
    }
    if !ctx.force && !conflicts.is_empty() {
        // kubectl's upgrade from client-side apply (`lastAppliedManager`): conflicts on
        // fields whose live value is still the last-applied one are forced.
        if ctx.manager == LAST_APPLIED_MANAGER
            && let Some(allowed) = live_body
                .as_ref()
                .and_then(|l| allowed_from_last_applied(l, &lists))
        {
            conflicts.retain(|(_, p)| !allowed.has(p));
        }
        if !conflicts.is_empty() {
            let mut out: Vec<ApplyConflict> = conflicts.into_iter().map(|(c, _)| c).collect();
            out.sort_by(|a, b| {
                a.manager
                    .cmp(&b.manager)
                    .then_with(|| a.field.cmp(&b.field))
            });
            out.dedup();
            return Err(PatchError::Conflict(out));
        }
    }
    for (j, e) in entries.iter_mut().enumerate() {
        if Some(j) == own_idx {
            continue;
        }
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    let object_changed = live_body.as_ref() != Some(&merged);
    let new_set = strip_meta(&config_set);
    match own_idx {
        Some(i) => {
            let e = &mut entries[i];
            e.set = new_set;
            e.api_version = api_version;
            if object_changed || e.time.is_none() {
                e.time = Some(ctx.now.to_string());
            }
        }
        None => entries.push(ManagedEntry {
            manager: ctx.manager.to_string(),
            operation: "Apply".into(),
            api_version,
            time: Some(ctx.now.to_string()),
            subresource: subresource.to_string(),
            set: new_set,
        }),
    }
    // `lastAppliedUpdater`: kubectl's server-side apply keeps an existing client-side
    // last-applied annotation in step with what it applied.
    if ctx.manager == LAST_APPLIED_MANAGER {
        sync_last_applied(&mut merged, applied);
    }
    write_managed(&mut merged, entries);
    Ok(merged)
}

pub(super) const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
pub(super) const LAST_APPLIED_MANAGER: &str = "kubectl";

pub(super) fn last_applied(obj: &Value) -> Option<&str> {
    obj.get("metadata")?
        .get("annotations")?
        .get(LAST_APPLIED_ANNOTATION)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Fields of the last-applied configuration whose live value is still the applied one.
pub(super) fn allowed_from_last_applied(live: &Value, lists: &Schema<'_>) -> Option<FieldSet> {
    let last: Value = serde_json::from_str(last_applied(live)?).ok()?;
    if !last.is_object() {
        return None;
    }
    let set = to_field_set(&last, lists).ok()?;
    let cmp = compare(Some(&last), Some(live), lists);
    Some(set.difference(&cmp.modified).difference(&cmp.removed))
}

pub(super) fn sync_last_applied(merged: &mut Value, applied: &Value) {
    if last_applied(merged).is_none() {
        return;
    }
    let mut cfg = applied.clone();
    if let Some(Value::Object(ann)) = cfg
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
    {
        ann.remove(LAST_APPLIED_ANNOTATION);
        if ann.is_empty()
            && let Some(Value::Object(meta)) = cfg.get_mut("metadata")
        {
            meta.remove("annotations");
        }
    }
    let encoded = format!("{cfg}\n");
    if let Some(Value::Object(ann)) = merged
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
    {
        ann.insert(LAST_APPLIED_ANNOTATION.into(), Value::String(encoded));
    }
}
