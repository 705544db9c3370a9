//! The pages in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `playwright-core` from npm, both installed by `cargo xtask test`.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

mod support;

use std::path::{Path, PathBuf};

use cqrs_storage::azurite::{TestAzurite, unique_name};
use support::{App, Options, SCANNER_KEY};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Chromium and playwright-core, or a panic saying how to get them.
fn tools() -> (PathBuf, PathBuf) {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let playwright = workspace().join(".tools/playwright/node_modules/playwright-core");
    assert!(
        chromium.is_file(),
        "this test needs Chromium at {} (set CHROMIUM to use another); `cargo xtask test` installs Debian's \
         package, or run `apt-get install chromium`",
        chromium.display()
    );
    assert!(
        playwright.is_dir(),
        "this test needs playwright-core in .tools/playwright; `cargo xtask test` installs it, or run \
         `npm install --prefix .tools/playwright playwright-core`"
    );
    (chromium, playwright)
}

fn run_script(script: &str, env: &[(&str, String)]) -> String {
    let (chromium, playwright) = tools();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(script);
    let mut cmd = std::process::Command::new("node");
    cmd.arg(&path)
        .env("CHROMIUM", chromium)
        .env("PLAYWRIGHT_CORE", playwright);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run node (Node.js is needed for the browser tests): {e}")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn screenshot(name: &str) -> String {
    let dir = workspace().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name).display().to_string()
}

/// One test, so the account-wide CORS rule of its private Azurite is set up once.
#[tokio::test]
async fn the_form_shows_the_token_and_the_dashboard_updates_live() {
    tools();
    let mut app = App::start_on(
        TestAzurite::private().await,
        Options {
            cors_for_web: true,
            ..Options::default()
        },
    )
    .await;
    app.start_worker("registrar", &[]).await;
    app.start_worker("stocker", &[]).await;

    let out = run_script(
        "register.cjs",
        &[
            ("WEB_URL", app.web.clone()),
            ("EMAIL", format!("{}@example.com", unique_name("browser"))),
            ("SCREENSHOT", screenshot("register.png")),
        ],
    );
    assert!(out.contains("\"token\":\"RT-"), "{out}");

    run_script(
        "inventory.cjs",
        &[
            ("WEB_URL", app.web.clone()),
            ("SCANNER_KEY", SCANNER_KEY.to_string()),
            ("COMMAND_ID", unique_name("scan")),
            ("SCREENSHOT", screenshot("inventory.png")),
        ],
    );
}

/// The dashboard of a shop of 100,000 items: totals, pages, searches and a live update.
#[tokio::test]
async fn the_dashboard_of_a_100_000_item_shop_pages_searches_and_updates_live() {
    tools();
    let mut app = App::start_on(TestAzurite::private().await, Options::default()).await;
    app.start_worker("stocker", &[]).await;
    let (csv, _) = support::big_stocktake();
    let result =
        support::wait_for_stocktake(&support::upload_stocktake(&app, &csv, "big").await).await;
    assert_eq!(result["status"], "applied", "{result}");
    support::wait_until("the web role to show the stock take", || async {
        support::inventory_summary(&app.web).await["totals"]["items"]
            == support::LOCATIONS * support::PER_LOCATION
    })
    .await;
    run_script(
        "inventory-large.cjs",
        &[
            ("WEB_URL", app.web.clone()),
            ("SCANNER_KEY", SCANNER_KEY.to_string()),
            ("COMMAND_ID", unique_name("scan")),
            ("SCREENSHOT", screenshot("inventory-large.png")),
        ],
    );
}
