//! `cargo xtask images`: the operator and reference app container images, where Docker runs.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::shell::{root, step};

/// Workspace version, also the chart's appVersion and the image tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Operator image.
pub fn operator_image() -> String {
    format!("ghcr.io/cqrs-operator/cqrs-operator:{VERSION}")
}
/// Reference app image.
pub fn app_image() -> String {
    format!("ghcr.io/cqrs-operator/reference-app:{VERSION}")
}

/// Whether a Docker daemon answers (the client alone is not enough).
pub fn docker_running() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds both images.
pub fn build() -> Result<()> {
    if !docker_running() {
        bail!(
            "building images needs a running Docker engine: `docker info` fails here \
             (install Docker Engine or Docker Desktop, and start it)"
        );
    }
    for (dockerfile, tag) in [
        ("docker/operator.Dockerfile", operator_image()),
        ("docker/reference-app.Dockerfile", app_image()),
    ] {
        step(
            &format!("docker build -f {dockerfile} -t {tag}"),
            Command::new("docker")
                .args(["build", "-f", dockerfile, "-t", &tag, "."])
                .env("DOCKER_BUILDKIT", "1")
                .current_dir(root()),
        )?;
    }
    Ok(())
}
