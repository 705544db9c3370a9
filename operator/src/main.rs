//! `cqrs-operator`: the Kubernetes operator, its local runtime, and CRD tooling.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use cqrs_operator::crd::CqrsApp;

#[derive(Parser)]
#[command(
    version,
    about = "Runs CqrsApps (queues, blobs, web and autoscaled worker roles) on Kubernetes or on one machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CqrsApp CustomResourceDefinition (the same YAML the Helm chart ships).
    Crd {
        /// Print the field reference as a Markdown table instead (used for the README).
        #[arg(long)]
        markdown: bool,
    },
    /// Check a CqrsApp manifest the way the operator does, without a cluster.
    Validate {
        /// The manifest file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { markdown: true } => {
            print!("{}", cqrs_operator::crd::reference::markdown());
            ExitCode::SUCCESS
        }
        Command::Crd { markdown: false } => match serde_yaml::to_string(&CqrsApp::crd()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Validate { file } => match cqrs_operator::manifest::load(&file) {
            Ok(app) => {
                println!(
                    "{}: CqrsApp {} is valid",
                    file.display(),
                    app.metadata.name.unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
