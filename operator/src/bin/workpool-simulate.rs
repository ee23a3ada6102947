//! workpool-simulate: replays the standard task traces through workpool's autoscaler
//! and a KEDA + HPA model, prints a markdown table of the results and writes one SVG
//! plot per trace.
//!
//! ```text
//! workpool-simulate [--out DIR] [--seed N] [--seeds COUNT] [--trace NAME]...
//! ```
//!
//! The table is that of the first seed; with `--seeds COUNT` > 1 a summary over seeds
//! `N..N+COUNT` follows (and goes to `summary.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use workpool_operator::simulate::{self, Comparison, plot};

const USAGE: &str = "usage: workpool-simulate [--out DIR] [--seed N] [--seeds COUNT] [--trace NAME]...\n\
  --out DIR     write <trace>.svg, results.md (and summary.md) there (created if missing)\n\
  --seed N      seed of the traces and pod start times [default: 1]\n\
  --seeds COUNT also run seeds N+1.. up to COUNT seeds and print a summary [default: 1]\n\
  --trace NAME  run only this trace (repeatable): steady, burst, diurnal, spiky,\n\
                long-tasks, metric-outage";

struct Options {
    out: Option<PathBuf>,
    seed: u64,
    seeds: u64,
    traces: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        out: None,
        seed: 1,
        seeds: 1,
        traces: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--out" => options.out = Some(PathBuf::from(value("--out")?)),
            "--seed" => {
                let text = value("--seed")?;
                options.seed = text
                    .parse()
                    .map_err(|_| format!("--seed wants a whole number, not {text:?}"))?;
            }
            "--seeds" => {
                let text = value("--seeds")?;
                options.seeds = text
                    .parse()
                    .ok()
                    .filter(|count| (1..=1_000).contains(count))
                    .ok_or(format!(
                        "--seeds wants a count from 1 to 1000, not {text:?}"
                    ))?;
            }
            "--trace" => options.traces.push(value("--trace")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if message.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("workpool-simulate: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let scenarios = simulate::standard_scenarios(options.seed);
    for name in &options.traces {
        if !scenarios
            .iter()
            .any(|scenario| &scenario.trace.name == name)
        {
            eprintln!("workpool-simulate: no trace named {name:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    let run_seed = |seed: u64| -> Vec<Comparison> {
        simulate::standard_scenarios(seed)
            .iter()
            .filter(|scenario| {
                options.traces.is_empty() || options.traces.contains(&scenario.trace.name)
            })
            .map(|scenario| simulate::compare(scenario, seed))
            .collect()
    };
    let runs: Vec<Vec<Comparison>> = (0..options.seeds)
        .map(|offset| run_seed(options.seed.saturating_add(offset)))
        .collect();
    let comparisons: &[Comparison] = runs.first().map(Vec::as_slice).unwrap_or_default();
    let table = simulate::markdown_table(comparisons);
    println!("{table}");
    let summary = (options.seeds > 1).then(|| simulate::summary_table(&runs));
    if let Some(summary) = &summary {
        println!("{summary}");
    }
    if let Some(out) = options.out {
        if let Err(error) = std::fs::create_dir_all(&out) {
            eprintln!(
                "workpool-simulate: cannot create {}: {error}",
                out.display()
            );
            return ExitCode::FAILURE;
        }
        let mut files = vec![(out.join("results.md"), table)];
        if let Some(summary) = summary {
            files.push((out.join("summary.md"), summary));
        }
        for comparison in comparisons {
            let name = format!("{}.svg", comparison.scenario.trace.name);
            files.push((out.join(name), plot::svg(comparison)));
        }
        for (path, contents) in files {
            if let Err(error) = std::fs::write(&path, contents) {
                eprintln!(
                    "workpool-simulate: cannot write {}: {error}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {}", path.display());
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|arg| arg.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parses_out_seed_and_traces() {
        let options = parse(args(&[
            "--out",
            "bench/simulate",
            "--seed",
            "7",
            "--seeds",
            "3",
            "--trace",
            "burst",
        ]))
        .unwrap_or_else(|message| panic!("{message}"));
        assert_eq!(options.out, Some(PathBuf::from("bench/simulate")));
        assert_eq!(options.seed, 7);
        assert_eq!(options.seeds, 3);
        assert_eq!(options.traces, vec!["burst".to_string()]);
    }

    #[test]
    fn refuses_bad_arguments() {
        assert!(parse(args(&["--seed", "x"])).is_err_and(|m| m.contains("whole number")));
        assert!(parse(args(&["--out"])).is_err_and(|m| m.contains("needs a value")));
        assert!(parse(args(&["--bogus"])).is_err_and(|m| m.contains("unknown")));
        assert!(parse(args(&["--seeds", "0"])).is_err_and(|m| m.contains("from 1 to 1000")));
        assert!(parse(args(&["--help"])).is_err_and(|m| m.is_empty()));
    }
}
