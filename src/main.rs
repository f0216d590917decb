use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    atlas_access_operator::cli::run(atlas_access_operator::cli::Cli::parse()).await
}
