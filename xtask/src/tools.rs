//! Installs what the tests need into `.tools/` (git-ignored), idempotently.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::shell::{on_path, root, step};

/// The Azurite release the tests run against.
pub const AZURITE_VERSION: &str = "3.35.0";

/// Makes sure Azurite is installed in `.tools/azurite`; returns its executable.
pub fn azurite() -> Result<PathBuf> {
    let dir = root().join(".tools/azurite");
    let bin = dir.join("node_modules/.bin/azurite");
    let stamp = dir.join("node_modules/azurite/package.json");
    let installed = std::fs::read_to_string(&stamp)
        .is_ok_and(|pkg| pkg.contains(&format!("\"version\": \"{AZURITE_VERSION}\"")));
    if installed && bin.is_file() {
        return Ok(bin);
    }
    if !on_path("npm") || !on_path("node") {
        bail!(
            "Azurite needs Node.js and npm, which are not on PATH. Install Node.js 18+ \
             (e.g. `apt-get install nodejs npm`, or from https://nodejs.org), then run this again"
        );
    }
    std::fs::create_dir_all(&dir)?;
    step(
        &format!("installing Azurite {AZURITE_VERSION} from npm into .tools/azurite"),
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .arg(format!("azurite@{AZURITE_VERSION}")),
    )?;
    if !bin.is_file() {
        bail!("npm finished but {} is missing", bin.display());
    }
    Ok(bin)
}
