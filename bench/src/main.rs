//! `cqrs-bench`: the benchmarks behind `cargo xtask bench`. Each figure is the median of
//! several runs and is compared with a baseline measured in the same run, on Azurite.

mod common;
mod drain;
mod e2e;
mod http;
mod load;
mod memory;
mod peers;
mod scale;
mod shop;
mod stocktake;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cqrs_storage::azurite::{Azurite, AzuriteOptions};
use cqrs_storage::{ConnectionString, RetrySettings, StorageAccount};

use common::{Bench, Row, table};

pub(crate) fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores ({model})")
}

/// The benchmarks, in the order they run.
const NAMES: [&str; 8] = [
    "drain",
    "stocktake",
    "shop",
    "command",
    "query",
    "e2e",
    "scale",
    "memory",
];

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("static-server") => {
            let port: u16 = arg(&args, "--port").context("--port")?.parse()?;
            let file = PathBuf::from(arg(&args, "--file").context("--file")?);
            http::static_server(port, &file).await
        }
        Some("run") => run(&args).await,
        Some("peers") => {
            // NB: two TLS crypto providers are linked (kube brings ring, the Azure SDK
            // aws-lc-rs), so rustls cannot pick one itself.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            peers::run(&args[1..]).await
        }
        Some("fleet") => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            peers::run_fleet(&args[1..]).await
        }
        _ => bail!(
            "usage: cqrs-bench run --bin-dir <dir> --out <file> [--azurite <connection string>] [--quick] [--only <name>]\n(without --azurite each benchmark starts its own Azurite: $CQRS_AZURITE_BIN or .tools/azurite)"
        ),
    }
}

async fn run(args: &[String]) -> Result<()> {
    let work = std::env::temp_dir().join(format!("cqrs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let shared = arg(args, "--azurite")
        .map(|cs| ConnectionString::parse(&cs))
        .transpose()?;
    let bin_dir = PathBuf::from(arg(args, "--bin-dir").context("--bin-dir")?);
    let quick = args.iter().any(|a| a == "--quick");
    let only = arg(args, "--only");
    if let Some(name) = &only
        && !NAMES.contains(&name.as_str())
    {
        bail!(
            "--only {name}: unknown benchmark; expected one of {}",
            NAMES.join(", ")
        );
    }
    let out = PathBuf::from(arg(args, "--out").context("--out")?);
    let mut rows: Vec<Row> = Vec::new();
    let mut runs = 0;
    for name in NAMES {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        eprintln!("==> {name}");
        // A fresh in-memory Azurite per benchmark (unless one is given), so what one leaves
        // behind cannot slow the next.
        let own = match &shared {
            Some(_) => None,
            None => Some(Azurite::start(AzuriteOptions::default()).await?),
        };
        let cs = match (&shared, &own) {
            (Some(cs), _) => cs.clone(),
            (None, Some(azurite)) => azurite.connection_string(),
            (None, None) => unreachable!("one of them is set"),
        };
        let bench = Bench {
            account: StorageAccount::from_connection_string(&cs, RetrySettings::BACKGROUND)?,
            cs,
            bin_dir: bin_dir.clone(),
            work: work.clone(),
            quick,
            shared: shared.is_some(),
        };
        runs = bench.runs();
        let started = std::time::Instant::now();
        let new = measure(name, &bench)
            .await
            .with_context(|| format!("benchmark {name} (process logs in {})", work.display()))?;
        eprintln!("    done in {:.0}s", started.elapsed().as_secs_f64());
        eprint!("{}", table(&new));
        rows.extend(new);
        if let Some(azurite) = own {
            azurite.stop().await;
        }
    }
    let date = time::OffsetDateTime::now_utc().date();
    let report = format!(
        "Measured {date} on {}, against Azurite (in memory) on the same machine; release builds; \
         each figure is the median of {} run(s){}.\n\n{}",
        machine(),
        runs,
        if quick {
            " (quick mode: shorter runs, not for quoting)"
        } else {
            ""
        },
        table(&rows)
    );
    println!("\n{report}");
    std::fs::write(&out, &report).with_context(|| format!("cannot write {}", out.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

async fn measure(name: &str, bench: &Bench) -> Result<Vec<Row>> {
    match name {
        "drain" => drain::run(bench).await,
        "stocktake" => stocktake::run(bench).await,
        "shop" => shop::run(bench).await,
        "command" => http::command_path(bench).await,
        "query" => http::query_path(bench).await,
        "e2e" => e2e::run(bench).await,
        "scale" => scale::run(bench).await,
        "memory" => memory::run(bench).await,
        other => bail!("unknown benchmark {other}"),
    }
}
