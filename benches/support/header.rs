//! The header every bench prints above its tables: the exact command, the machine, Postgres, the
//! commit and the date, so a result in BENCHMARKS.md says what produced it.

use crate::support::server::Databases;

/// What a run was made with.
pub struct RunHeader {
    pub command: String,
    pub cores: usize,
    pub cpu_model: String,
    postgres: String,
    synchronous_commit: String,
    commit: String,
}

impl RunHeader {
    /// Reads the command line of `cargo bench --bench {bench}`, the machine and the server.
    pub async fn read(bench: &str, databases: &Databases) -> anyhow::Result<Self> {
        let flags: Vec<String> = std::env::args()
            .skip(1)
            .filter(|arg| arg != "--bench")
            .collect();
        let command = if flags.is_empty() {
            format!("cargo bench --bench {bench}")
        } else {
            format!("cargo bench --bench {bench} -- {}", flags.join(" "))
        };
        let postgres = databases.admin_scalar("SELECT version()").await?;
        let synchronous_commit = databases
            .admin_scalar("SELECT current_setting('synchronous_commit')")
            .await?;
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(Self {
            command,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
            postgres,
            synchronous_commit,
            commit,
        })
    }

    /// The title and the command.
    pub fn print_intro(&self, title: &str) {
        println!("# {title}\n");
        println!("- command: `{}`", self.command);
    }

    /// Postgres, the commit and the date.
    pub fn print_provenance(&self) {
        println!(
            "- postgres: {}; synchronous_commit={}",
            self.postgres, self.synchronous_commit
        );
        println!(
            "- git commit: {} (uncommitted changes are not reflected in the hash)",
            self.commit
        );
        println!(
            "- date: {}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S %:z")
        );
    }
}
