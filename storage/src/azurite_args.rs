//! Azurite's command line, one definition for the test harness (`cqrs_storage::azurite`) and
//! for xtask (`cargo xtask up` and `cargo xtask test`). xtask includes this file by path
//! (`#[path]`), so it shares the line without building the storage crate's dependencies.

use std::ffi::OsString;
use std::path::Path;

/// Arguments that run Azurite quietly on 127.0.0.1 with the given blob, queue and table ports,
/// its data under `location` or in memory.
pub fn azurite_args(blob: u16, queue: u16, table: u16, location: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--silent",
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    for (service, port) in [("blob", blob), ("queue", queue), ("table", table)] {
        args.push(format!("--{service}Host").into());
        args.push("127.0.0.1".into());
        args.push(format!("--{service}Port").into());
        args.push(port.to_string().into());
    }
    match location {
        Some(dir) => {
            args.push("--location".into());
            args.push(dir.as_os_str().to_owned());
        }
        None => args.push("--inMemoryPersistence".into()),
    }
    args
}
