//! Human-readable renderings of stats and dead letters, shared by `workpool-worker` and
//! `kubectl workpool` (their `--json` forms are the types' own JSON).

use crate::{DeadLetter, QueueStats};

/// The stats as `workpool-worker stats` prints them.
pub fn stats(st: &QueueStats) -> String {
    let lag_note = if st.lag_estimated {
        " (estimated: too many entries to count)"
    } else if st.lag_computed {
        " (counted: redis reported none or a wrong one)"
    } else {
        ""
    };
    let deleted_note = if st.pending_deleted > 0 {
        format!(
            " ({} of them deleted from the stream: not in the backlog)",
            st.pending_deleted
        )
    } else {
        String::new()
    };
    let oldest = match st.oldest_pending_age_ms {
        Some(ms) => format!("{:.3}s", ms as f64 / 1000.0),
        None => "-".to_string(),
    };
    let mut out = format!(
        "stream:        {} (exists: {}, length: {})\n\
         group:         {} (exists: {})\n\
         backlog:       {}\n\
         lag:           {}{lag_note}\n\
         pending:       {}{deleted_note}\n\
         dead letters:  {}\n\
         oldest pending: {oldest}\n\
         consumers:     {}\n",
        st.stream,
        st.stream_exists,
        st.stream_length,
        st.group,
        st.group_exists,
        st.backlog,
        st.lag,
        st.pending,
        st.dead_letters,
        st.consumers.len(),
    );
    for c in &st.consumers {
        out += &format!(
            "  {:<30} pending {:>8}  idle {:>10.3}s\n",
            c.name,
            c.pending,
            c.idle_ms as f64 / 1000.0
        );
    }
    if !st.draining.is_empty() {
        out += &format!("draining:      {}\n", st.draining.len());
        for (name, state) in &st.draining {
            out += &format!("  {name:<30} {}\n", state.as_str());
        }
    }
    if st.partitions.len() > 1 {
        out += &format!("partitions:    {}\n", st.partitions.len());
        for (i, p) in st.partitions.iter().enumerate() {
            out += &format!(
                "  {i:<3} {:<30} backlog {:>8}  pending {:>8}  dead letters {:>6}  ({})\n",
                p.stream,
                p.backlog,
                p.pending,
                p.dead_letters,
                if p.group_exists {
                    "group exists"
                } else {
                    "no group yet"
                }
            );
        }
    }
    out
}

/// A table of dead letters (one line each) and their count.
pub fn dead_letters(list: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:<26} {:<24} {:>10} {:<20} {}\n",
        "REF", "TASK ID", "DELIVERIES", "CONSUMER", "ERROR"
    );
    for d in list {
        out += &format!(
            "{:<26} {:<24} {:>10} {:<20} {}\n",
            d.reference.to_string(),
            one_line(d.task_id.as_deref().unwrap_or("-"), 24),
            d.deliveries.map_or("-".into(), |n| n.to_string()),
            one_line(d.consumer.as_deref().unwrap_or("-"), 20),
            one_line(d.error.as_deref().unwrap_or("-"), 120),
        );
    }
    out += &format!(
        "{} dead letter{}\n",
        list.len(),
        if list.len() == 1 { "" } else { "s" }
    );
    out
}

/// `s` on one line, at most `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        flat.chars().take(max.saturating_sub(3)).collect::<String>() + "..."
    }
}
