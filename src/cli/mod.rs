//! The command line: one binary, one subcommand per job.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api;

mod apply;
mod audit;
mod export;
mod manifests;
mod simulate;

pub use apply::{ApplyArgs, AtlasArgs, RunArgs};
pub use export::{ExportArgs, seed_demo};

/// MongoDB Atlas organization membership, declared as Kubernetes objects.
#[derive(Parser, Debug)]
#[command(name = "atlas-access-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print both CustomResourceDefinitions as YAML (or write them into a folder).
    Crds {
        /// Write `atlasorgusers.yaml` and `atlasteammemberships.yaml` into this folder
        /// instead of printing them.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Show what would be done in Atlas for each AtlasOrgUser / AtlasTeamMembership in the
    /// manifests, changing nothing.
    Plan(RunArgs),
    /// Make Atlas match the manifests (no cluster needed) and print the resulting statuses as YAML.
    Apply(ApplyArgs),
    /// Who is in each organization the manifests name that no AtlasOrgUser declares, who is
    /// declared but absent, pending invitations and those expiring soon. Changes nothing.
    Audit(RunArgs),
    /// Write an existing organization as manifests (one AtlasOrgUser per user, one
    /// AtlasTeamMembership per team) that adopt it: applying them changes nothing in Atlas.
    Export(ExportArgs),
    /// Serve an in-memory Atlas Admin API (the simulator) for tests, demos and benchmarks.
    Sim(crate::sim::cli::SimArgs),
    /// Run the operator: reconcile AtlasOrgUser and AtlasTeamMembership objects in the cluster
    /// that the kubeconfig (or the in-cluster service account) points at.
    Run(crate::controller::RunArgs),
}

/// Run the command line; the exit code says whether it worked.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crds { out_dir } => crds(out_dir),
        Command::Plan(args) => apply::plan(args).await,
        Command::Apply(args) => apply::apply(args).await,
        Command::Audit(args) => audit::audit(args).await,
        Command::Export(args) => export::export(args).await,
        Command::Sim(args) => sim(args).await,
        Command::Run(args) => match crate::controller::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn crds(out_dir: Option<PathBuf>) -> ExitCode {
    let crds = api::crds();
    match out_dir {
        None => {
            let docs: Vec<String> = crds.iter().map(api::crd_yaml).collect();
            print!("{}", docs.join("---\n"));
            ExitCode::SUCCESS
        }
        Some(dir) => {
            for crd in &crds {
                let path = dir.join(api::crd_file_name(crd));
                if let Err(e) = std::fs::write(&path, api::crd_yaml(crd)) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
    }
}

async fn sim(args: crate::sim::cli::SimArgs) -> ExitCode {
    crate::sim::cli::run(args).await
}
