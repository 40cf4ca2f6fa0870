//! Username/password authentication of MQTT clients (the CONNECT User Name and Password fields,
//! MQTT 3.1.1 section 3.1.3.4-5 and MQTT 5.0 section 3.1.3.5-6) against a password file.
//!
//! The file has one user per line, `username:PHC-string`, where the PHC string is an Argon2id hash
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`). Blank lines and lines starting with `#` are
//! ignored. A user name is non-empty and has no `:`, whitespace or control character.
//!
//! New hashes use [`ARGON2_M_COST_KIB`], [`ARGON2_T_COST`] and [`ARGON2_P_COST`]; verification
//! reads the parameters from each stored hash, so files written with other costs keep working.
//! Hashing and verifying are slow on purpose: call them from `tokio::task::spawn_blocking`.
//! [`set_user`] and [`delete_user`] edit the file in place, keeping comments and other lines, by
//! writing a temporary file in the same directory and renaming it over the original. They do not
//! lock the file: two concurrent edits may lose one of them.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use thiserror::Error;

/// Argon2id memory cost of new hashes, in KiB (19 MiB, the OWASP baseline for Argon2id).
///
/// With [`ARGON2_T_COST`] and [`ARGON2_P_COST`] one hash or verification takes 20-25 ms in a
/// release build on the 2-core development machine (measured: hash 25 ms, verify 20 ms), inside
/// the 10-30 ms target. Each hash or verification in flight holds this much memory.
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id iterations of new hashes.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes of new hashes (the argon2 crate computes them on one thread).
pub const ARGON2_P_COST: u32 = 1;

/// PHC algorithm identifier accepted in the file.
const ALGORITHM: &str = "argon2id";

/// Why a user name is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UsernameError {
    /// The name is empty.
    #[error("empty user name")]
    Empty,
    /// The name contains `:`, the separator of the file.
    #[error("user name contains ':'")]
    Colon,
    /// The name contains whitespace.
    #[error("user name contains whitespace")]
    Whitespace,
    /// The name contains a control character.
    #[error("user name contains a control character")]
    Control,
}

/// What is wrong with one line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineErrorKind {
    /// The line has no `:`.
    #[error("missing ':' between user name and hash")]
    MissingColon,
    /// The user name breaks a rule.
    #[error("{0}")]
    Username(UsernameError),
    /// The same user appears on an earlier line (given).
    #[error("user already defined on line {0}")]
    Duplicate(usize),
    /// Nothing after the `:`.
    #[error("empty password hash")]
    EmptyHash,
    /// The hash is not a valid PHC string or has invalid Argon2 parameters.
    #[error("invalid password hash: {0}")]
    BadHash(argon2::password_hash::Error),
    /// The hash is a PHC string of another algorithm.
    #[error("unsupported hash algorithm {0:?} (expected argon2id)")]
    UnsupportedAlgorithm(String),
    /// The PHC string lacks its salt or hash output.
    #[error("password hash has no salt or no hash value")]
    IncompleteHash,
}

/// One bad line of a password file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub kind: LineErrorKind,
}

/// Errors of the password file and of hashing.
#[derive(Debug, Error)]
pub enum AuthFileError {
    /// The file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Lines of `origin` (the file name) are invalid: all of them, one per line of the message,
    /// as `origin:line: problem`.
    #[error("{}", format_lines(origin, errors))]
    Invalid {
        origin: String,
        errors: Vec<LineError>,
    },
    /// A user name given to [`set_user`] or [`delete_user`] breaks a rule.
    #[error("invalid user name {name:?}: {reason}")]
    BadUsername { name: String, reason: UsernameError },
    /// Hashing failed (invalid parameters).
    #[error("cannot hash password: {0}")]
    Hash(argon2::password_hash::Error),
}

fn format_lines(origin: &str, errors: &[LineError]) -> String {
    let lines = errors
        .iter()
        .map(|e| format!("{origin}:{}: {}", e.line, e.kind));
    lines.collect::<Vec<_>>().join("\n")
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AuthFileError + '_ {
    move |source| AuthFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Checks a user name: non-empty, no `:`, no whitespace, no control character.
pub fn validate_username(name: &str) -> Result<(), UsernameError> {
    if name.is_empty() {
        return Err(UsernameError::Empty);
    }
    for c in name.chars() {
        if c == ':' {
            return Err(UsernameError::Colon);
        }
        if c.is_whitespace() {
            return Err(UsernameError::Whitespace);
        }
        if c.is_control() {
            return Err(UsernameError::Control);
        }
    }
    Ok(())
}

/// Checks that `phc` is an Argon2id PHC string whose verification will actually run the hash.
fn check_hash(phc: &str) -> Result<(), LineErrorKind> {
    if phc.is_empty() {
        return Err(LineErrorKind::EmptyHash);
    }
    let parsed = PasswordHash::new(phc).map_err(LineErrorKind::BadHash)?;
    if parsed.algorithm.as_str() != ALGORITHM {
        return Err(LineErrorKind::UnsupportedAlgorithm(
            parsed.algorithm.as_str().to_owned(),
        ));
    }
    if let Some(version) = parsed.version {
        Version::try_from(version).map_err(|e| LineErrorKind::BadHash(e.into()))?;
    }
    Params::try_from(&parsed).map_err(LineErrorKind::BadHash)?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(LineErrorKind::IncompleteHash);
    }
    Ok(())
}

/// The default parameters of new hashes.
fn default_params() -> Result<Params, AuthFileError> {
    Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| AuthFileError::Hash(e.into()))
}

fn hash_with(password: &[u8], params: Params) -> Result<String, AuthFileError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hash = argon2
        .hash_password(password, &salt)
        .map_err(AuthFileError::Hash)?;
    Ok(hash.to_string())
}

/// Hashes `password` with Argon2id, the default costs and a random salt, as a PHC string.
///
/// Slow on purpose (20-25 ms): call it from `tokio::task::spawn_blocking` in async code.
pub fn hash_password(password: &[u8]) -> Result<String, AuthFileError> {
    hash_with(password, default_params()?)
}

/// A PHC string with the same algorithm and costs as `model` but an all-zero hash value, which no
/// password produces in practice: verifying against it costs what a real verification costs.
fn dummy_like(model: &str) -> Option<String> {
    let mut parsed = PasswordHash::new(model).ok()?;
    let len = parsed.hash.map_or(Params::DEFAULT_OUTPUT_LEN, |h| h.len());
    parsed.hash = Some(Output::new(&vec![0; len]).ok()?);
    Some(parsed.to_string())
}

/// Dummy hash with the default costs, for a file without users.
fn default_dummy() -> Option<String> {
    let salt = "AAAAAAAAAAAAAAAAAAAAAA"; // 16 zero bytes
    let model = format!(
        "${ALGORITHM}$v=19$m={ARGON2_M_COST_KIB},t={ARGON2_T_COST},p={ARGON2_P_COST}${salt}${}",
        "A".repeat(43)
    );
    dummy_like(&model)
}

fn verify_phc(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

/// The users of a password file, by name.
pub struct PasswordFile {
    /// User name to Argon2id PHC string, checked when loaded.
    users: HashMap<String, String>,
    /// Hash verified for unknown users so they cost as much as known ones.
    dummy: Option<String>,
}

impl fmt::Debug for PasswordFile {
    /// Shows the number of users, never the hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Reads and parses the password file at `path`; see [`PasswordFile::parse`].
    pub fn load(path: &Path) -> Result<PasswordFile, AuthFileError> {
        let text = fs::read_to_string(path).map_err(io_error(path))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a password file. `origin` names it in error messages
    /// (`origin:line: problem`). Every bad line is reported, in one [`AuthFileError::Invalid`].
    pub fn parse(text: &str, origin: &str) -> Result<PasswordFile, AuthFileError> {
        let mut users = HashMap::new();
        let mut first_lines: HashMap<&str, usize> = HashMap::new();
        let mut first_hash = None;
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let mut fail = |kind| errors.push(LineError { line, kind });
            let Some((name, hash)) = split_line(raw) else {
                continue;
            };
            let Some(hash) = hash else {
                fail(LineErrorKind::MissingColon);
                continue;
            };
            if let Err(reason) = validate_username(name) {
                fail(LineErrorKind::Username(reason));
                continue;
            }
            if let Err(kind) = check_hash(hash) {
                fail(kind);
                continue;
            }
            if let Some(&first_line) = first_lines.get(name) {
                fail(LineErrorKind::Duplicate(first_line));
                continue;
            }
            first_lines.insert(name, line);
            first_hash.get_or_insert(hash);
            users.insert(name.to_owned(), hash.to_owned());
        }
        if !errors.is_empty() {
            return Err(AuthFileError::Invalid {
                origin: origin.to_owned(),
                errors,
            });
        }
        let dummy = first_hash.and_then(dummy_like).or_else(default_dummy);
        Ok(PasswordFile { users, dummy })
    }

    /// Whether `password` is the password of `username`.
    ///
    /// This runs Argon2 and takes tens of milliseconds of CPU: in async code call it from
    /// `tokio::task::spawn_blocking`, and bound how many run at once. An unknown user still costs
    /// one verification (against a dummy hash with the costs of the file's first user), so the
    /// time taken does not reveal which users exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => verify_phc(hash, password),
            None => {
                if let Some(dummy) = &self.dummy {
                    std::hint::black_box(verify_phc(dummy, password));
                }
                false
            }
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The user name and hash of a line (`None` for a blank line or a comment), trimmed, with a
/// leading byte order mark ignored; the hash is `None` if the line has no `:`.
fn split_line(line: &str) -> Option<(&str, Option<&str>)> {
    let content = line.trim_start_matches('\u{feff}').trim();
    if content.is_empty() || content.starts_with('#') {
        return None;
    }
    Some(match content.split_once(':') {
        Some((name, hash)) => (name, Some(hash)),
        None => (content, None),
    })
}

/// The user name of a line, as [`PasswordFile::parse`] reads it.
fn line_user(line: &str) -> Option<&str> {
    split_line(line).map(|(name, _)| name)
}

/// The line ending of `line` (from `split_inclusive('\n')`).
fn line_ending(line: &str) -> &str {
    if line.ends_with("\r\n") {
        "\r\n"
    } else if line.ends_with('\n') {
        "\n"
    } else {
        ""
    }
}

/// Adds `username` with `password`, or replaces its hash, in the password file at `path`.
///
/// Other lines and comments are kept as they are; a second definition of the same user is
/// dropped. A missing file is created with mode 0600; an existing one keeps its permissions (not
/// its owner). The file is replaced atomically (a symbolic link at `path` is replaced by a
/// regular file). Hashing is slow: see [`hash_password`].
pub fn set_user(path: &Path, username: &str, password: &[u8]) -> Result<(), AuthFileError> {
    set_user_with(path, username, password, default_params()?)
}

fn set_user_with(
    path: &Path,
    username: &str,
    password: &[u8],
    params: Params,
) -> Result<(), AuthFileError> {
    check_name_argument(username)?;
    let hash = hash_with(password, params)?;
    let (text, permissions) = match fs::read_to_string(path) {
        Ok(text) => (
            text,
            Some(fs::metadata(path).map_err(io_error(path))?.permissions()),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut out = String::with_capacity(text.len() + username.len() + hash.len() + 2);
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        if line_user(line) != Some(username) {
            out.push_str(line);
        } else if !replaced {
            replaced = true;
            out.push_str(&format!("{username}:{hash}{}", line_ending(line)));
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{username}:{hash}\n"));
    }
    write_atomic(path, &out, permissions)
}

/// Removes `username` from the password file at `path`, keeping every other line.
///
/// Returns whether the user was there; the file is rewritten (atomically) only if it was.
/// A missing file is an error.
pub fn delete_user(path: &Path, username: &str) -> Result<bool, AuthFileError> {
    check_name_argument(username)?;
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let kept: String = text
        .split_inclusive('\n')
        .filter(|line| line_user(line) != Some(username))
        .collect();
    if kept.len() == text.len() {
        return Ok(false);
    }
    let permissions = fs::metadata(path).map_err(io_error(path))?.permissions();
    write_atomic(path, &kept, Some(permissions))?;
    Ok(true)
}

fn check_name_argument(username: &str) -> Result<(), AuthFileError> {
    validate_username(username).map_err(|reason| AuthFileError::BadUsername {
        name: username.to_owned(),
        reason,
    })
}

/// Writes `contents` to a new file beside `path` and renames it over `path`.
fn write_atomic(
    path: &Path,
    contents: &str,
    permissions: Option<Permissions>,
) -> Result<(), AuthFileError> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "path has no file name");
    let name = path
        .file_name()
        .ok_or_else(invalid)
        .map_err(io_error(path))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".{}.{suffix:016x}.tmp", name.to_string_lossy()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options.open(&tmp).and_then(|mut file| {
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    });
    if let Err(e) = result {
        // Best effort: the temporary file may not even exist.
        drop(fs::remove_file(&tmp));
        return Err(io_error(path)(e));
    }
    // Make the rename durable; not all platforms can open a directory, so this is best effort.
    if let Ok(dir) = fs::File::open(dir) {
        drop(dir.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so tests stay fast, even in debug builds.
    fn cheap() -> Params {
        Params::new(8, 1, 1, None).expect("valid params")
    }

    fn cheap_hash(password: &str) -> String {
        hash_with(password.as_bytes(), cheap()).expect("hash")
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).expect("read")
    }

    #[test]
    fn parse_and_verify() {
        let (alice, bob) = (cheap_hash("wonderland"), cheap_hash("builder"));
        let text = format!("\u{feff}  alice:{alice}  \r\n\n# bob\nbob:{bob}\n\ncarol.x@y:{bob}");
        let file = PasswordFile::parse(&text, "users.passwd").expect("valid file");
        assert_eq!((file.len(), file.is_empty()), (3, false));
        let cases = [
            ("alice", "wonderland", true),
            ("alice", "builder", false),
            ("alice", "", false),
            ("bob", "builder", true),
            ("carol.x@y", "builder", true),
            ("Alice", "wonderland", false), // user names are case-sensitive
            ("mallory", "wonderland", false),
            ("", "", false),
        ];
        for (user, password, want) in cases {
            assert_eq!(
                file.verify(user, password.as_bytes()),
                want,
                "{user} {password}"
            );
        }
        assert_eq!(format!("{file:?}"), "PasswordFile { users: 3, .. }");
    }

    #[test]
    fn unknown_users_cost_a_verification_with_the_same_costs() {
        let hash = hash_with(b"pw", Params::new(64, 3, 2, None).expect("params")).expect("hash");
        let file = PasswordFile::parse(&format!("u:{hash}\n"), "x").expect("valid");
        let dummy = file.dummy.as_deref().expect("dummy hash");
        let params = |phc| PasswordHash::new(phc).expect("phc").params.to_string();
        assert_eq!(params(dummy), params(&hash));
        assert_ne!(dummy, hash);
        assert!(!file.verify("nobody", b"pw"));

        let empty = PasswordFile::parse("# nobody yet\n", "x").expect("valid");
        assert!(empty.is_empty());
        let dummy = empty.dummy.as_deref().expect("default dummy");
        assert_eq!(params(dummy), "m=19456,t=2,p=1");
        assert_eq!(check_hash(dummy), Ok(()));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        use LineErrorKind::*;
        let good = cheap_hash("pw");
        let not_phc = "not-a-hash";
        let small_m = "$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        let text = [
            "# header".to_owned(),
            "alice".to_owned(),
            format!(":{good}"),
            format!("al ice:{good}"),
            format!("al\u{7}ice:{good}"),
            "bob:".to_owned(),
            format!("bob:{not_phc}"),
            "bob:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_owned(),
            "bob:$argon2id$v=19$m=8,t=1,p=1".to_owned(),
            format!("bob:{small_m}"),
            format!("carol:{good}"),
            format!("carol:{good}"),
        ];
        let result = PasswordFile::parse(&text.join("\n"), "u.pw");
        let Err(AuthFileError::Invalid { origin, errors }) = result else {
            panic!("expected an invalid file");
        };
        assert_eq!(origin, "u.pw");
        let got: Vec<_> = errors.into_iter().map(|e| (e.line, e.kind)).collect();
        let (bad_phc, bad_m) = (check_hash(not_phc), check_hash(small_m));
        assert!(matches!(bad_phc, Err(BadHash(_))) && matches!(bad_m, Err(BadHash(_))));
        let want = vec![
            (2, MissingColon),
            (3, Username(UsernameError::Empty)),
            (4, Username(UsernameError::Whitespace)),
            (5, Username(UsernameError::Control)),
            (6, EmptyHash),
            (7, bad_phc.expect_err("bad")),
            (8, UnsupportedAlgorithm("pbkdf2-sha256".into())),
            (9, IncompleteHash),
            (10, bad_m.expect_err("bad")),
            (12, Duplicate(11)),
        ];
        assert_eq!(got, want);

        let err = PasswordFile::parse("x\ny:", "users.passwd").expect_err("invalid");
        let want = "users.passwd:1: missing ':' between user name and hash\n\
                    users.passwd:2: empty password hash";
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn usernames() {
        use UsernameError::*;
        let cases = [
            ("alice", Ok(())),
            ("ünï-cødé_42@host", Ok(())),
            ("", Err(Empty)),
            ("a:b", Err(Colon)),
            ("a\tb", Err(Whitespace)),
            ("a\u{a0}b", Err(Whitespace)),
            ("a\u{0}b", Err(Control)),
        ];
        for (name, want) in cases {
            assert_eq!(validate_username(name), want, "{name:?}");
        }
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing.passwd");
        let err = PasswordFile::load(&path).expect_err("missing").to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        fs::write(&path, "nocolon\n").expect("write");
        let err = PasswordFile::load(&path).expect_err("bad file").to_string();
        let want = format!(
            "{}:1: missing ':' between user name and hash",
            path.display()
        );
        assert_eq!(err, want);
    }

    #[test]
    fn set_user_and_delete_user_edit_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.passwd");
        set_user_with(&path, "alice", b"one", cheap()).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(
            &path,
            format!("# admins\n{}\n# end, no newline", read(&path)),
        )
        .expect("write");
        set_user_with(&path, "bob", b"two", cheap()).expect("add bob");
        set_user_with(&path, "alice", b"three", cheap()).expect("replace alice");

        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(
            [lines[0], lines[2], lines[3]],
            ["# admins", "", "# end, no newline"]
        );
        assert!(
            lines[1].starts_with("alice:$argon2id$v=19$m=8,t=1,p=1$"),
            "{text}"
        );
        assert!(lines[4].starts_with("bob:$argon2id$"), "{text}");
        let file = PasswordFile::load(&path).expect("valid");
        assert_eq!(file.len(), 2);
        assert!(file.verify("alice", b"three") && !file.verify("alice", b"one"));
        assert!(file.verify("bob", b"two"));

        assert!(delete_user(&path, "alice").expect("delete"));
        assert!(!delete_user(&path, "alice").expect("already gone"));
        let text = read(&path);
        assert!(
            text.starts_with("# admins\n\n# end, no newline\nbob:"),
            "{text}"
        );
        assert_eq!(PasswordFile::load(&path).expect("valid").len(), 1);
        let leftovers = fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[cfg(unix)]
    #[test]
    fn existing_permissions_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.passwd");
        fs::write(&path, "").expect("write");
        fs::set_permissions(&path, Permissions::from_mode(0o640)).expect("chmod");
        set_user_with(&path, "alice", b"pw", cheap()).expect("set");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn duplicates_are_collapsed_and_bad_names_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.passwd");
        let old = cheap_hash("old");
        fs::write(&path, format!("alice:{old}\r\nalice:{old}\r\n")).expect("write");
        set_user_with(&path, "alice", b"new", cheap()).expect("set");
        let text = read(&path);
        assert_eq!(text.matches("alice:").count(), 1);
        assert!(text.ends_with("\r\n"), "line ending kept");
        let file = PasswordFile::load(&path).expect("valid");
        assert!(file.verify("alice", b"new"));

        let err = set_user_with(&path, "a b", b"pw", cheap()).expect_err("bad name");
        let want = "invalid user name \"a b\": user name contains whitespace";
        assert_eq!(err.to_string(), want);
        assert!(delete_user(&path, "").is_err());
        let missing = delete_user(&dir.path().join("nope"), "alice");
        assert!(matches!(missing, Err(AuthFileError::Io { .. })));
    }

    #[test]
    fn default_hash_round_trip() {
        let hash = hash_password(b"secret").expect("hash");
        let prefix = "$argon2id$v=19$m=19456,t=2,p=1$";
        assert!(hash.starts_with(prefix), "{hash}");
        assert_eq!(check_hash(&hash), Ok(()));
        let file = PasswordFile::parse(&format!("u:{hash}"), "x").expect("valid");
        assert!(file.verify("u", b"secret") && !file.verify("u", b"Secret"));
    }
}
