//! Decoding of the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`)
//! for the few kinds kubectl's typed generators send that way (`kubectl create
//! namespace|configmap|secret|serviceaccount`). Other kinds answer 415.
//!
//! Envelope: the magic `k8s\0` then a `runtime.Unknown` message
//! (1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType);
//! `raw` is the typed message, whose field numbers come from the API's `generated.proto`.

use base64::Engine;
use serde_json::{Map, Value, json};

#[derive(Debug)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or("truncated varint")?;
        *i += 1;
        out |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

fn fields(b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(b, &mut i)?),
            1 => {
                i += 8;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).map_err(|_| "length overflow")?;
                let end = i.checked_add(len).ok_or("length overflow")?;
                let s = b.get(i..end).ok_or("truncated bytes")?;
                i = end;
                Field::Bytes(s)
            }
            5 => {
                i += 4;
                Field::Fixed
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        if i > b.len() {
            return Err("truncated field".into());
        }
        out.push((num, f));
    }
    Ok(out)
}

fn string(f: &Field<'_>) -> String {
    match f {
        Field::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

fn map_entry(f: &Field<'_>, bytes_value: bool) -> Result<(String, Value), String> {
    let Field::Bytes(b) = f else {
        return Err("map entry is not a message".into());
    };
    let mut k = String::new();
    let mut v = json!("");
    for (n, x) in fields(b)? {
        match (n, &x) {
            (1, _) => k = string(&x),
            (2, Field::Bytes(raw)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(raw))
            }
            (2, _) => v = json!(string(&x)),
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    let mut owners = Vec::new();
    for (n, f) in fields(b)? {
        match n {
            1 => {
                m.insert("name".into(), json!(string(&f)));
            }
            2 => {
                m.insert("generateName".into(), json!(string(&f)));
            }
            3 => {
                m.insert("namespace".into(), json!(string(&f)));
            }
            6 => {
                m.insert("resourceVersion".into(), json!(string(&f)));
            }
            11 => {
                let (k, v) = map_entry(&f, false)?;
                labels.insert(k, v);
            }
            12 => {
                let (k, v) = map_entry(&f, false)?;
                annotations.insert(k, v);
            }
            13 => {
                if let Field::Bytes(ob) = f {
                    let mut o = Map::new();
                    for (on, of) in fields(ob)? {
                        match (on, &of) {
                            (1, _) => {
                                o.insert("kind".into(), json!(string(&of)));
                            }
                            (3, _) => {
                                o.insert("name".into(), json!(string(&of)));
                            }
                            (4, _) => {
                                o.insert("uid".into(), json!(string(&of)));
                            }
                            (5, _) => {
                                o.insert("apiVersion".into(), json!(string(&of)));
                            }
                            (6, Field::Varint(v)) => {
                                o.insert("controller".into(), json!(*v != 0));
                            }
                            (7, Field::Varint(v)) => {
                                o.insert("blockOwnerDeletion".into(), json!(*v != 0));
                            }
                            _ => {}
                        }
                    }
                    owners.push(Value::Object(o));
                }
            }
            14 => finalizers.push(json!(string(&f))),
            _ => {}
        }
    }
    m.retain(|_, v| v.as_str().is_none_or(|s| !s.is_empty()));
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), json!(finalizers));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), json!(owners));
    }
    Ok(Value::Object(m))
}

/// Decodes a protobuf request body into the JSON object, or says why not.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("missing the k8s protobuf magic prefix")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    match tn {
                        1 => api_version = string(&tf),
                        2 => kind = string(&tf),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    let mut data = Map::new();
    let mut binary = Map::new();
    let mut string_data = Map::new();
    let mut ns_finalizers = Vec::new();
    for (n, f) in fields(raw)? {
        match (api_version.as_str(), kind.as_str(), n) {
            ("v1", _, 1) => {
                if let Field::Bytes(b) = f {
                    obj.insert("metadata".into(), object_meta(b)?);
                }
            }
            ("v1", "ConfigMap", 2) => {
                let (k, v) = map_entry(&f, false)?;
                data.insert(k, v);
            }
            ("v1", "ConfigMap", 3) => {
                let (k, v) = map_entry(&f, true)?;
                binary.insert(k, v);
            }
            ("v1", "ConfigMap", 4) | ("v1", "Secret", 5) => {
                if let Field::Varint(v) = f {
                    obj.insert("immutable".into(), json!(v != 0));
                }
            }
            ("v1", "Secret", 2) => {
                let (k, v) = map_entry(&f, true)?;
                data.insert(k, v);
            }
            ("v1", "Secret", 3) => {
                obj.insert("type".into(), json!(string(&f)));
            }
            ("v1", "Secret", 4) => {
                let (k, v) = map_entry(&f, false)?;
                string_data.insert(k, v);
            }
            ("v1", "Namespace", 2) => {
                if let Field::Bytes(b) = f {
                    for (sn, sf) in fields(b)? {
                        if sn == 1 {
                            ns_finalizers.push(json!(string(&sf)));
                        }
                    }
                }
            }
            ("v1", "ServiceAccount", 4) => {
                if let Field::Varint(v) = f {
                    obj.insert("automountServiceAccountToken".into(), json!(v != 0));
                }
            }
            ("v1", "ConfigMap" | "Secret" | "Namespace" | "ServiceAccount", _) => {}
            _ => {
                return Err(format!(
                    "this test double decodes protobuf only for v1 ConfigMap, Secret, Namespace and ServiceAccount, not {api_version} {kind}"
                ));
            }
        }
    }
    if !data.is_empty() {
        obj.insert("data".into(), Value::Object(data));
    }
    if !binary.is_empty() {
        obj.insert("binaryData".into(), Value::Object(binary));
    }
    if !string_data.is_empty() {
        obj.insert("stringData".into(), Value::Object(string_data));
    }
    if !ns_finalizers.is_empty() {
        obj.insert("spec".into(), json!({"finalizers": ns_finalizers}));
    }
    obj.entry("metadata").or_insert_with(|| json!({}));
    Ok(Value::Object(obj))
}

/// Decodes a protobuf `DeleteOptions` body (client-go sends one when its content type is
/// protobuf, as Helm's kube client does) into its JSON form.
pub fn decode_delete_options(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("missing the k8s protobuf magic prefix")?;
    let mut raw: &[u8] = &[];
    let mut kind = String::new();
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (tn, tf) in fields(tm)? {
                    if tn == 2 {
                        kind = string(&tf);
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    if !kind.is_empty() && kind != "DeleteOptions" {
        return Err(format!("expected DeleteOptions, got {kind}"));
    }
    let mut out = Map::new();
    let mut dry_run = Vec::new();
    for (n, f) in fields(raw)? {
        match (n, &f) {
            (1, Field::Varint(v)) => {
                // int64 as a varint: two's complement for negative values.
                out.insert("gracePeriodSeconds".into(), json!(*v as i64));
            }
            (2, Field::Bytes(b)) => {
                let mut pre = Map::new();
                for (pn, pf) in fields(b)? {
                    match pn {
                        1 => pre.insert("uid".into(), json!(string(&pf))),
                        2 => pre.insert("resourceVersion".into(), json!(string(&pf))),
                        _ => None,
                    };
                }
                out.insert("preconditions".into(), Value::Object(pre));
            }
            (3, Field::Varint(v)) => {
                out.insert("orphanDependents".into(), json!(*v != 0));
            }
            (4, _) => {
                out.insert("propagationPolicy".into(), json!(string(&f)));
            }
            (5, _) => dry_run.push(json!(string(&f))),
            _ => {}
        }
    }
    if !dry_run.is_empty() {
        out.insert("dryRun".into(), Value::Array(dry_run));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(num: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3) | 2, u8::try_from(b.len()).expect("short")];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn decodes_a_configmap() {
        let tm = [bytes_field(1, b"v1"), bytes_field(2, b"ConfigMap")].concat();
        let meta = [bytes_field(1, b"cm"), bytes_field(3, b"default")].concat();
        let entry = [bytes_field(1, b"a"), bytes_field(2, b"b")].concat();
        let raw = [bytes_field(1, &meta), bytes_field(2, &entry)].concat();
        let body = [b"k8s\0".to_vec(), bytes_field(1, &tm), bytes_field(2, &raw)].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cm", "namespace": "default"}, "data": {"a": "b"}})
        );
        assert!(decode(b"nope").is_err());
        assert!(decode(&body[..body.len() - 2]).is_err());
    }

    #[test]
    fn decodes_delete_options() {
        let tm = [bytes_field(1, b"v1"), bytes_field(2, b"DeleteOptions")].concat();
        let pre = bytes_field(1, b"u-1");
        let raw = [
            vec![1 << 3, 5],
            bytes_field(2, &pre),
            bytes_field(4, b"Background"),
            bytes_field(5, b"All"),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), bytes_field(1, &tm), bytes_field(2, &raw)].concat();
        assert_eq!(
            decode_delete_options(&body).expect("decodes"),
            json!({"gracePeriodSeconds": 5, "preconditions": {"uid": "u-1"},
                   "propagationPolicy": "Background", "dryRun": ["All"]})
        );
    }
}
