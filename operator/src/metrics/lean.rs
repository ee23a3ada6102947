//! Labelled metrics kept as plain numbers, rendered in the Prometheus text format.
//!
//! The `prometheus` crate keeps, in every series of a `*Vec`, a copy of the metric's
//! description and its label pairs: about 600 bytes a series. The operator has 17 series
//! per pool, so at 10,000 pools that was the largest part of its memory (heap profile of
//! the scale benchmark). Here a series is its label values joined in one string and a
//! number: about 60 bytes. The text is the same as the crate's: `# HELP`, `# TYPE`, then
//! one line per series with the labels sorted by name.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::{Arc, Mutex, MutexGuard};

/// Separates the label values in a series' key (never part of a label value here: the
/// values are Kubernetes names, partition numbers and fixed reasons).
const SEP: char = '\u{0}';

/// What a series holds: `i64` for a gauge, `u64` for a counter.
pub trait Value: Copy + Default + Display + Send + 'static {
    /// `# TYPE` of the metric.
    const KIND: &'static str;
    /// One more.
    fn plus_one(self) -> Self;
    /// `self + by`, saturating.
    fn plus(self, by: Self) -> Self;
}

macro_rules! value {
    ($t:ty, $kind:literal) => {
        impl Value for $t {
            const KIND: &'static str = $kind;
            fn plus_one(self) -> Self {
                self.saturating_add(1)
            }
            fn plus(self, by: Self) -> Self {
                self.saturating_add(by)
            }
        }
    };
}
value!(i64, "gauge");
value!(u64, "counter");

struct Inner<V> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// Indices into `labels`, in the order the text lists them (by name).
    sorted: Vec<usize>,
    series: Mutex<BTreeMap<Box<str>, V>>,
}

/// A metric with labels: a gauge (`LeanVec<i64>`) or a counter (`LeanVec<u64>`).
#[derive(Clone)]
pub struct LeanVec<V: Value> {
    inner: Arc<Inner<V>>,
}

/// A [`LeanVec`] of either value type, as rendering and pool removal see it.
pub trait Family: Send + Sync {
    /// The metric's name.
    fn name(&self) -> &'static str;
    /// Its label names, in the order `with_label_values` takes the values.
    fn label_names(&self) -> &'static [&'static str];
    /// Appends the metric in the text format (nothing when it has no series).
    fn render_into(&self, out: &mut String);
    /// Removes every series whose first label values are `leading` (a pool's series:
    /// namespace and name, whatever the other labels); how many.
    fn remove_leading(&self, leading: &[&str]) -> usize;
}

/// One series of a [`LeanVec`], as `with_label_values` returns it.
pub struct Series<'a, V: Value> {
    vec: &'a LeanVec<V>,
    key: Box<str>,
}

impl<V: Value> LeanVec<V> {
    /// A metric named `name` with these label names.
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        let mut sorted: Vec<usize> = (0..labels.len()).collect();
        sorted.sort_by_key(|&i| labels[i]);
        LeanVec {
            inner: Arc::new(Inner {
                name,
                help,
                labels,
                sorted,
                series: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Box<str>, V>> {
        // A panic elsewhere while holding the lock leaves plain numbers: still usable.
        self.inner
            .series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn key(values: &[&str]) -> Box<str> {
        let mut k = String::with_capacity(values.iter().map(|v| v.len() + 1).sum());
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                k.push(SEP);
            }
            k.push_str(v);
        }
        k.into_boxed_str()
    }

    /// The series with these label values (in the order of the label names), created at
    /// its first write.
    pub fn with_label_values(&self, values: &[&str]) -> Series<'_, V> {
        debug_assert_eq!(values.len(), self.inner.labels.len(), "{}", self.inner.name);
        Series {
            vec: self,
            key: Self::key(values),
        }
    }

    /// Removes a series; whether it was there.
    pub fn remove_label_values(&self, values: &[&str]) -> bool {
        self.lock().remove(&*Self::key(values)).is_some()
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Value> Family for LeanVec<V> {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn label_names(&self) -> &'static [&'static str] {
        self.inner.labels
    }

    fn remove_leading(&self, leading: &[&str]) -> usize {
        // SEP sorts before every other character, so the series that start with these
        // values are the key itself and the keys right after it that continue with SEP
        // ("ns\0a", "ns\0a\0x" come before "ns\0ab").
        let prefix = Self::key(leading);
        let mut series = self.lock();
        let gone: Vec<Box<str>> = series
            .range::<str, _>((
                std::ops::Bound::Included(&*prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k)
            .take_while(|k| {
                k.strip_prefix(&*prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(SEP))
            })
            .cloned()
            .collect();
        for k in &gone {
            series.remove(k);
        }
        gone.len()
    }

    fn render_into(&self, out: &mut String) {
        let series = self.lock();
        if series.is_empty() {
            return;
        }
        let Inner {
            name,
            help,
            labels,
            sorted,
            ..
        } = &*self.inner;
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {}", V::KIND);
        let mut values: Vec<&str> = Vec::with_capacity(labels.len());
        for (key, v) in series.iter() {
            values.clear();
            values.extend(key.split(SEP));
            out.push_str(name);
            out.push('{');
            for (n, &i) in sorted.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(labels[i]);
                out.push_str("=\"");
                escape_value(values.get(i).copied().unwrap_or(""), out);
                out.push('"');
            }
            let _ = writeln!(out, "}} {v}");
        }
    }
}

impl<V: Value> Series<'_, V> {
    fn update(self, f: impl FnOnce(V) -> V) {
        let mut series = self.vec.lock();
        let v = series.entry(self.key).or_default();
        *v = f(*v);
    }

    /// Sets the value (a gauge).
    pub fn set(self, value: V) {
        self.update(|_| value)
    }

    /// Adds one.
    pub fn inc(self) {
        self.update(V::plus_one)
    }

    /// Adds `by`.
    pub fn inc_by(self, by: V) {
        self.update(|v| v.plus(by))
    }

    /// The value (0 for a series never written).
    pub fn get(&self) -> V {
        self.vec.lock().get(&self.key).copied().unwrap_or_default()
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_as_the_prometheus_crate_does() {
        let g: LeanVec<i64> = LeanVec::new("x_gauge", "A gauge", &["namespace", "workpool"]);
        let c: LeanVec<u64> =
            LeanVec::new("x_total", "A counter", &["namespace", "workpool", "reason"]);
        g.with_label_values(&["ns", "b"]).set(-2);
        g.with_label_values(&["ns", "a"]).set(3);
        c.with_label_values(&["ns", "a", "api"]).inc();
        c.with_label_values(&["ns", "a", "api"]).inc_by(4);
        assert_eq!(c.with_label_values(&["ns", "a", "api"]).get(), 5);
        assert_eq!(c.with_label_values(&["ns", "z", "api"]).get(), 0);

        // The same metrics through the prometheus crate's encoder.
        let r = prometheus::Registry::new();
        let pg = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("x_gauge", "A gauge"),
            &["namespace", "workpool"],
        )
        .expect("gauge");
        let pc = prometheus::IntCounterVec::new(
            prometheus::Opts::new("x_total", "A counter"),
            &["namespace", "workpool", "reason"],
        )
        .expect("counter");
        r.register(Box::new(pg.clone())).expect("register");
        r.register(Box::new(pc.clone())).expect("register");
        pg.with_label_values(&["ns", "b"]).set(-2);
        pg.with_label_values(&["ns", "a"]).set(3);
        pc.with_label_values(&["ns", "a", "api"]).inc_by(5);
        let mut want = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut want)
            .expect("encode");

        let mut text = String::new();
        g.render_into(&mut text);
        c.render_into(&mut text);
        assert_eq!(text, String::from_utf8(want).expect("utf-8"));

        assert!(g.remove_label_values(&["ns", "a"]));
        assert!(!g.remove_label_values(&["ns", "a"]));
        assert_eq!(g.len(), 1);
        assert!(g.remove_label_values(&["ns", "b"]));
        let mut empty = String::new();
        g.render_into(&mut empty);
        assert_eq!(empty, "", "a metric without series is left out");
    }

    #[test]
    fn a_pools_series_go_whatever_their_other_labels_and_no_other_pools() {
        let c: LeanVec<u64> = LeanVec::new("x_total", "h", &["namespace", "workpool", "reason"]);
        for (ns, pool) in [
            ("ns", "a"),
            ("ns", "ab"),
            ("ns", "a-b"),
            ("ns2", "a"),
            ("n", "s"),
        ] {
            c.with_label_values(&[ns, pool, "api"]).inc();
            c.with_label_values(&[ns, pool, "auth"]).inc();
        }
        assert_eq!(c.remove_leading(&["ns", "a"]), 2);
        assert_eq!(c.remove_leading(&["ns", "a"]), 0);
        assert_eq!(c.len(), 8, "ns/ab, ns/a-b, ns2/a and n/s stay");
        assert_eq!(c.with_label_values(&["ns", "ab", "api"]).get(), 1);
        let g: LeanVec<i64> = LeanVec::new("x", "h", &["namespace", "workpool"]);
        g.with_label_values(&["ns", "a"]).set(1);
        g.with_label_values(&["ns", "ab"]).set(1);
        assert_eq!(g.remove_leading(&["ns", "a"]), 1);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        let g: LeanVec<i64> = LeanVec::new("x", "h", &["b", "a"]);
        g.with_label_values(&["q\"\\\n", "first"]).set(1);
        let mut text = String::new();
        g.render_into(&mut text);
        assert!(
            text.ends_with("x{a=\"first\",b=\"q\\\"\\\\\\n\"} 1\n"),
            "{text}"
        );
    }
}
