//! The users file: names, salted password hashes (argon2id, PHC strings) and roles, in TOML.
//!
//! ```toml
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>"
//! roles = ["shop"]
//!
//! [users.billing-svc]      # no password: only a client certificate with CN=billing-svc logs in
//! roles = ["billing"]
//! ```
//!
//! `tandem user add|remove|list` edits it; the broker re-reads it when it changes. Writes go to a
//! temporary file that is renamed over the old one, readable by the owner only, so the broker never
//! sees half a file. Hashing: argon2id with m = 19 MiB, t = 2, p = 1 (OWASP's recommendation) and a
//! 16-byte random salt; verification takes the parameters from the stored string, so stronger
//! parameters can be introduced without invalidating old hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use serde::{Deserialize, Serialize};

/// Largest memory cost accepted from a stored hash, in KiB: a tampered file must not make each
/// login allocate gigabytes.
const MAX_M_COST_KIB: u32 = 256 * 1024;
/// Largest time cost accepted from a stored hash.
const MAX_T_COST: u32 = 16;

/// One user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The argon2 PHC string; `None`: no password login (certificate only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The roles the user holds.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// By name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
}

/// A problem with the users file or a password.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file cannot be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was tried.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not parse, or holds a bad entry.
    #[error("users file {}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A user name that is not allowed.
    #[error("user name {0:?}: use 1-64 letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    /// `add` of a user that exists (without replace), `remove` of one that does not.
    #[error("{0}")]
    Conflict(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Whether `name` is a valid user name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT)
}

/// Hashes a password with a fresh random salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

/// Checks a password against a PHC string (the string's own parameters are used). Slow by design:
/// call it off the async threads.
pub fn verify_password(password: &str, phc: &str) -> bool {
    hasher().verify_password(password.as_bytes(), phc).is_ok()
}

/// Checks that a stored hash is an argon2 PHC string with sane costs.
fn check_hash(phc: &str) -> Result<(), String> {
    let h = PasswordHash::new(phc).map_err(|e| format!("not a PHC hash string ({e})"))?;
    if !h.algorithm.as_str().starts_with("argon2") {
        return Err(format!("algorithm {} is not argon2", h.algorithm));
    }
    let params = Params::try_from(&h).map_err(|e| format!("bad argon2 parameters ({e})"))?;
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST {
        return Err(format!(
            "argon2 costs m={} t={} exceed the limits m<={MAX_M_COST_KIB} t<={MAX_T_COST}",
            params.m_cost(),
            params.t_cost()
        ));
    }
    Ok(())
}

impl UsersFile {
    /// Reads and checks a users file. A missing file is an error (the broker refuses to start
    /// rather than run with nobody, or everybody, allowed).
    pub fn load(path: &Path) -> Result<UsersFile, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            op: "reading users file",
            path: path.into(),
            source,
        })?;
        UsersFile::parse(&text).map_err(|problem| UsersError::Invalid {
            path: path.into(),
            problem,
        })
    }

    /// Parses and checks the file's text.
    pub fn parse(text: &str) -> Result<UsersFile, String> {
        let f: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, u) in &f.users {
            if !valid_name(name) {
                return Err(UsersError::BadName(name.clone()).to_string());
            }
            if let Some(p) = &u.password {
                check_hash(p).map_err(|e| format!("user {name:?}: {e}"))?;
            }
        }
        Ok(f)
    }

    /// Reads the file, or an empty one when it does not exist yet (for `tandem user add`).
    pub fn load_or_empty(path: &Path) -> Result<UsersFile, UsersError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            _ => UsersFile::load(path),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename), mode 0600 on Unix.
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        use std::io::Write;
        let text = toml::to_string(self).map_err(|e| UsersError::Invalid {
            path: path.into(),
            problem: e.to_string(),
        })?;
        let header = "# tandem users file: managed by `tandem user add|remove|list`.\n\
                      # Passwords are argon2id hashes; never put a clear password here.\n\n";
        let tmp = path.with_extension("toml.tmp");
        let io = |op, source| UsersError::Io {
            op,
            path: tmp.clone(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| io("creating users file", e))?;
        f.write_all(header.as_bytes())
            .and_then(|_| f.write_all(text.as_bytes()))
            .and_then(|_| f.sync_all())
            .map_err(|e| io("writing users file", e))?;
        std::fs::rename(&tmp, path).map_err(|source| UsersError::Io {
            op: "replacing users file",
            path: path.into(),
            source,
        })
    }

    /// Adds a user (or replaces one with `replace`). `password`: `None` for certificate-only.
    pub fn add(
        &mut self,
        name: &str,
        password: Option<&str>,
        roles: Vec<String>,
        replace: bool,
    ) -> Result<(), UsersError> {
        if !valid_name(name) {
            return Err(UsersError::BadName(name.into()));
        }
        if self.users.contains_key(name) && !replace {
            return Err(UsersError::Conflict(format!(
                "user {name:?} exists; pass --replace to overwrite it"
            )));
        }
        let password = password.map(hash_password).transpose()?;
        self.users.insert(name.into(), User { password, roles });
        Ok(())
    }

    /// Removes a user.
    pub fn remove(&mut self, name: &str) -> Result<(), UsersError> {
        self.users
            .remove(name)
            .map(drop)
            .ok_or_else(|| UsersError::Conflict(format!("no user {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        // Salted: the same password hashes differently each time.
        assert_ne!(h, hash_password("correct horse").unwrap());
        check_hash(&h).unwrap();
    }

    #[test]
    fn file_round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut f = UsersFile::load_or_empty(&path).unwrap();
        f.add("alice", Some("pw"), vec!["shop".into()], false)
            .unwrap();
        f.add("svc", None, vec!["billing".into()], false).unwrap();
        assert!(matches!(
            f.add("alice", Some("x"), vec![], false),
            Err(UsersError::Conflict(_))
        ));
        assert!(matches!(
            f.add("bad name", Some("x"), vec![], false),
            Err(UsersError::BadName(_))
        ));
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"pw\""));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = UsersFile::load(&path).unwrap();
        assert_eq!(back, f);
        let mut back = back;
        back.remove("alice").unwrap();
        assert!(back.remove("alice").is_err());
    }

    #[test]
    fn bad_hashes_are_refused() {
        for bad in [
            "[users.a]\npassword = \"plain\"\n",
            "[users.a]\npassword = \"$argon2id$v=19$m=999999999,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n",
            "[users.a]\nroles = []\nextra = 1\n",
        ] {
            assert!(UsersFile::parse(bad).is_err(), "{bad}");
        }
    }
}
