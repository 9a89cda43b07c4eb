//! `tandem user add|remove|list`: manages the users file (docs/SECURITY.md).
//!
//! Passwords never appear on the command line (where `ps` and shell history would see them): they
//! come from stdin (`--password-stdin`, one line, for scripts), from an environment variable
//! (`--password-env VAR`), or from a prompt when stdin is a terminal. A running broker picks up
//! the change on its next login; no restart is needed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tandem_broker::security::users::UsersFile;

#[derive(Args, Debug)]
pub struct UserArgs {
    /// The users file (security.users_file in tandem.toml).
    #[arg(long, env = "TANDEM_USERS_FILE", value_name = "FILE", global = true)]
    file: Option<PathBuf>,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Add a user (the file is created if missing).
    Add {
        /// The user name (letters, digits, '.', '_', '-', '@'; also the CN of its client certificate).
        name: String,
        /// Roles, comma-separated (the grants in tandem.toml name them).
        #[arg(long, value_delimiter = ',', value_name = "ROLE,...")]
        roles: Vec<String>,
        /// Read the password from the first line of stdin, without a prompt (for scripts).
        #[arg(long, conflicts_with_all = ["password_env", "no_password"])]
        password_stdin: bool,
        /// Read the password from this environment variable (for scripts).
        #[arg(long, value_name = "VAR", conflicts_with = "no_password")]
        password_env: Option<String>,
        /// No password: the user can only log in with a client certificate whose CN is its name.
        #[arg(long)]
        no_password: bool,
        /// Replace an existing user of that name.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
    },
    /// List users and their roles (never their hashes).
    List,
}

fn read_password_line(input: &mut dyn BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input.read_line(&mut line).context("reading the password")?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    Ok(pw.to_string())
}

fn password(name: &str, stdin_flag: bool, env: Option<&str>) -> anyhow::Result<String> {
    let pw = if let Some(var) = env {
        std::env::var(var).with_context(|| format!("--password-env {var}: variable not set"))?
    } else {
        let stdin = std::io::stdin();
        if !stdin_flag && stdin.is_terminal() {
            eprint!("password for {name} (typed text is visible; prefer --password-stdin): ");
            std::io::stderr().flush().ok();
            let first = read_password_line(&mut stdin.lock())?;
            eprint!("again: ");
            std::io::stderr().flush().ok();
            if read_password_line(&mut stdin.lock())? != first {
                bail!("the two passwords differ");
            }
            first
        } else {
            read_password_line(&mut stdin.lock())?
        }
    };
    if pw.is_empty() {
        bail!("empty password refused (use --no-password for a certificate-only user)");
    }
    Ok(pw)
}

pub fn run(args: UserArgs) -> anyhow::Result<()> {
    let Some(file) = args.file else {
        bail!("--file FILE (or TANDEM_USERS_FILE) is required: the users file to manage");
    };
    match args.command {
        UserCommand::Add {
            name,
            roles,
            password_stdin,
            password_env,
            no_password,
            replace,
        } => {
            let mut users = UsersFile::load_or_empty(&file)?;
            let pw = if no_password {
                None
            } else {
                Some(password(&name, password_stdin, password_env.as_deref())?)
            };
            let roles: Vec<String> = roles
                .into_iter()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect();
            users.add(&name, pw.as_deref(), roles, replace)?;
            users.save(&file)?;
            eprintln!("user {name} saved in {}", file.display());
        }
        UserCommand::Remove { name } => {
            let mut users = UsersFile::load(&file)?;
            users.remove(&name)?;
            users.save(&file)?;
            eprintln!("user {name} removed from {}", file.display());
        }
        UserCommand::List => {
            let users = UsersFile::load_or_empty(&file)?;
            for (name, u) in &users.users {
                let login = if u.password.is_some() {
                    "password"
                } else {
                    "certificate-only"
                };
                println!("{name}\t{login}\troles={}", u.roles.join(","));
            }
        }
    }
    Ok(())
}
