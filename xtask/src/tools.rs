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
    npm_install(&dir, "azurite", AZURITE_VERSION)?;
    if !bin.is_file() {
        bail!("npm finished but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Installs `package@version` from npm into `dir` (a folder of `.tools/`).
fn npm_install(dir: &std::path::Path, package: &str, version: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let shown = dir.strip_prefix(root()).unwrap_or(dir);
    step(
        &format!(
            "installing {package} {version} from npm into {}",
            shown.display()
        ),
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(dir)
            .arg(format!("{package}@{version}")),
    )
}

/// The playwright-core release the browser tests drive Chromium with.
pub const PLAYWRIGHT_VERSION: &str = "1.65.1";

/// Makes sure playwright-core is installed in `.tools/playwright`; returns its module dir.
pub fn playwright() -> Result<PathBuf> {
    let dir = root().join(".tools/playwright");
    let module = dir.join("node_modules/playwright-core");
    let installed = std::fs::read_to_string(module.join("package.json"))
        .is_ok_and(|pkg| pkg.contains(&format!("\"version\": \"{PLAYWRIGHT_VERSION}\"")));
    if installed {
        return Ok(module);
    }
    if !on_path("npm") {
        bail!(
            "the browser tests need playwright-core from npm, and npm is not on PATH (install Node.js 18+)"
        );
    }
    npm_install(&dir, "playwright-core", PLAYWRIGHT_VERSION)?;
    Ok(module)
}

/// Makes sure Debian's Chromium is installed (`$CHROMIUM` overrides); returns its path.
pub fn chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("$CHROMIUM is {}, which is not a file", path.display());
    }
    let path = PathBuf::from("/usr/bin/chromium");
    if path.is_file() {
        return Ok(path);
    }
    let root_user =
        crate::shell::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0");
    if !(root_user && on_path("apt-get")) {
        bail!(
            "the browser tests need Chromium at /usr/bin/chromium: install Debian's package \
             (`sudo apt-get install chromium`) or set CHROMIUM to a Chromium binary"
        );
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "-q", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    println!("\n==> installing Chromium from Debian (apt-get install chromium)");
    if !install().is_ok_and(|s| s.success()) {
        step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-q"]),
        )?;
        step(
            "apt-get install chromium",
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "-q", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !path.is_file() {
        bail!("apt-get finished but /usr/bin/chromium is missing");
    }
    Ok(path)
}

/// Python packages the chart checks and the SDK interop tests use, pinned.
pub const PYTHON_PACKAGES: &[&str] = &[
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
    "PyYAML==6.0.2",
    // The official Azure SDK for Python: the reference app's interop tests send commands (plain
    // and through the claim check) exactly as a Python producer would.
    "azure-storage-blob==12.31.1",
    "azure-storage-queue==12.18.1",
    // Validates the images' SPDX bills of materials.
    "spdx-tools==0.8.3",
];

/// Makes sure `.tools/venv` has the chart-check and interop packages; returns its python.
pub fn python() -> Result<PathBuf> {
    let venv = root().join(".tools/venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("cqrs-packages.txt");
    let wanted = PYTHON_PACKAGES.join("\n");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    let system = ["python3", "python"].into_iter().find(|p| on_path(p)).ok_or_else(|| {
        anyhow::anyhow!("the chart checks and SDK interop tests need Python 3.9+ with venv and pip (e.g. `apt-get install python3 python3-venv`)")
    })?;
    if !python.is_file() {
        step(
            "creating a Python virtualenv in .tools/venv",
            Command::new(system).args(["-m", "venv"]).arg(&venv),
        )?;
    }
    step(
        &format!(
            "installing {} from PyPI into .tools/venv",
            PYTHON_PACKAGES.join(", ")
        ),
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_PACKAGES),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
