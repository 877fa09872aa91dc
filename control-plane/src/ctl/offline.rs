//! Offline key and trust-document operations of `wardenctl`. They read key files and never
//! talk to the control plane, so the root key can stay on an offline machine.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use warden_bus::release::{
    ReleaseManifest, RollbackPermit, SignedManifest, SignedRollbackPermit, ARTIFACT_BYTES_MAX,
};
use warden_bus::signed::KEY_BYTES;
use warden_bus::trust::{KeyGrant, SignedDocument, TrustDocument};
use warden_bus::{Clock, PublicKey, SigningKey, SystemClock, UnixMillis};

use super::CtlError;
use crate::views::TrustView;

/// What `trust sign` signs.
#[derive(Debug, Clone)]
pub struct TrustSignRequest {
    /// Current root key file.
    pub root_key: PathBuf,
    /// New root key file, when rotating the root.
    pub new_root_key: Option<PathBuf>,
    /// Document version.
    pub version: u64,
    /// Validity, such as 365d.
    pub expires_in: String,
    /// Task keys: HEX[,from=DURATION][,until=DURATION].
    pub task_keys: Vec<String>,
    /// Release keys, same form.
    pub release_keys: Vec<String>,
    /// Output file.
    pub out: PathBuf,
}

fn local(message: String) -> CtlError {
    CtlError::Local(message)
}

/// Generates a key: the seed in hex to `out` (mode 0600, never overwritten) and the public key
/// in hex to `out.pub`.
pub fn create_key(out: &Path) -> Result<SigningKey, CtlError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|error| {
            local(format!(
                "failed to create key file {}: {error}; it must not exist yet",
                out.display()
            ))
        })?;
    file.write_all(format!("{}\n", hex::encode(key.seed())).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| local(format!("failed to write {}: {error}", out.display())))?;
    let public_path = public_path(out);
    std::fs::write(&public_path, format!("{}\n", key.public_key().to_hex())).map_err(|error| {
        local(format!(
            "failed to write {}: {error}",
            public_path.display()
        ))
    })?;
    Ok(key)
}

fn public_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Reads a key seed file written by [`create_key`], rejecting files others can read.
pub fn read_key(path: &Path) -> Result<SigningKey, CtlError> {
    let metadata = std::fs::metadata(path).map_err(|error| {
        local(format!(
            "failed to read key file {}: {error}",
            path.display()
        ))
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(local(format!(
            "key file {} has mode {mode:o}, readable by other users; run chmod 600 on it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|error| {
        local(format!(
            "failed to read key file {}: {error}",
            path.display()
        ))
    })?;
    let bytes = hex::decode(text.trim()).map_err(|error| {
        local(format!(
            "key file {} is not a hex seed: {error}",
            path.display()
        ))
    })?;
    let seed: [u8; KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
        local(format!(
            "key file {} holds {} bytes; expected {KEY_BYTES}",
            path.display(),
            bytes.len()
        ))
    })?;
    Ok(SigningKey::from_seed(seed))
}

/// Parses a duration such as `30s`, `10m`, `2h`, `30d`, or the same with a leading `-`.
/// Returns milliseconds, negative for the past.
pub fn parse_offset(text: &str) -> Result<i64, CtlError> {
    let invalid = || {
        local(format!(
            "duration {text:?} must look like 30s, 10m, 2h or 30d, with an optional leading -"
        ))
    };
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let split = rest
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = rest.split_at(split);
    let number: i64 = number.parse().map_err(|_| invalid())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    let millis = number.checked_mul(unit_ms).ok_or_else(invalid)?;
    Ok(if negative { -millis } else { millis })
}

fn offset(now: UnixMillis, millis: i64) -> UnixMillis {
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if millis < 0 {
        now.saturating_sub(magnitude)
    } else {
        now.saturating_add(magnitude)
    }
}

/// Parses `HEX[,from=DURATION][,until=DURATION]` into a grant; the window defaults to
/// `[now, expires_at]`.
pub fn parse_grant(
    spec: &str,
    now: UnixMillis,
    expires_at: UnixMillis,
) -> Result<KeyGrant, CtlError> {
    let mut parts = spec.split(',');
    let hex = parts.next().unwrap_or_default();
    let key = PublicKey::from_hex(hex).map_err(|error| local(format!("key {spec:?}: {error}")))?;
    let mut grant = KeyGrant {
        public_key: key.as_bytes().to_vec(),
        not_before: now,
        not_after: expires_at,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("from", value)) => grant.not_before = offset(now, parse_offset(value)?),
            Some(("until", value)) => grant.not_after = offset(now, parse_offset(value)?),
            _ => {
                return Err(local(format!(
                    "key option {part:?} in {spec:?} must be from=DURATION or until=DURATION"
                )))
            }
        }
    }
    Ok(grant)
}

/// Builds, signs and writes a trust document.
pub fn sign_trust(request: &TrustSignRequest) -> Result<TrustView, CtlError> {
    let root = read_key(&request.root_key)?;
    let new_root = request.new_root_key.as_deref().map(read_key).transpose()?;
    let now = SystemClock.now();
    let expires_at = offset(now, parse_offset(&request.expires_in)?);
    let grants = |specs: &[String]| {
        specs
            .iter()
            .map(|spec| parse_grant(spec, now, expires_at))
            .collect::<Result<Vec<_>, _>>()
    };
    let named_root = new_root.as_ref().unwrap_or(&root);
    let document = TrustDocument {
        version: request.version,
        issued_at: now,
        expires_at,
        root_key: named_root.public_key().as_bytes().to_vec(),
        task_keys: grants(&request.task_keys)?,
        release_keys: grants(&request.release_keys)?,
    };
    let signers: Vec<&SigningKey> = match &new_root {
        Some(new_root) => vec![&root, new_root],
        None => vec![&root],
    };
    let signed =
        SignedDocument::sign(&document, &signers).map_err(|error| local(error.to_string()))?;
    let bytes = signed.encode().map_err(|error| local(error.to_string()))?;
    std::fs::write(
        &request.out,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    )
    .map_err(|error| {
        local(format!(
            "failed to write {}: {error}",
            request.out.display()
        ))
    })?;
    TrustView::new(&signed).map_err(local)
}

/// What `release sign` signs.
#[derive(Debug, Clone)]
pub struct ReleaseSignRequest {
    /// Release key file.
    pub release_key: PathBuf,
    /// The artifact.
    pub artifact: PathBuf,
    /// Component the artifact is.
    pub component: warden_bus::messages::Component,
    /// Release version.
    pub version: String,
    /// Target triple.
    pub target: String,
    /// Monotonic release counter.
    pub release_counter: u64,
    /// Output file for the signed manifest (base64 text).
    pub out: PathBuf,
}

/// Hashes an artifact, builds its manifest, signs it with the release key and writes it.
pub fn sign_release(request: &ReleaseSignRequest) -> Result<ReleaseManifest, CtlError> {
    use sha2::Digest;
    use std::io::Read;

    let key = read_key(&request.release_key)?;
    let file = std::fs::File::open(&request.artifact).map_err(|error| {
        local(format!(
            "failed to read artifact {}: {error}",
            request.artifact.display()
        ))
    })?;
    let mut reader = std::io::BufReader::new(file).take(ARTIFACT_BYTES_MAX + 1);
    let mut hasher = sha2::Sha256::new();
    let mut size: u64 = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer).map_err(|error| {
            local(format!(
                "failed to read artifact {}: {error}",
                request.artifact.display()
            ))
        })?;
        if read == 0 {
            break;
        }
        hasher.update(buffer.get(..read).unwrap_or_default());
        size += read as u64;
    }
    let manifest = ReleaseManifest {
        component: request.component,
        version: request.version.clone(),
        target: request.target.clone(),
        sha256: hasher.finalize().to_vec(),
        size,
        release_counter: request.release_counter,
        issued_at: SystemClock.now(),
    };
    let signed = SignedManifest::sign(&manifest, &key).map_err(|error| local(error.to_string()))?;
    let bytes = signed.encode().map_err(|error| local(error.to_string()))?;
    std::fs::write(
        &request.out,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    )
    .map_err(|error| {
        local(format!(
            "failed to write {}: {error}",
            request.out.display()
        ))
    })?;
    Ok(manifest)
}

/// Maximum validity of a rollback permit, in milliseconds. A permit covers one planned rollback,
/// so it should not stay valid for long.
pub const PERMIT_VALIDITY_MAX_MS: i64 = 7 * 24 * 3600 * 1000;

/// Parameters of `release permit`.
#[derive(Debug, Clone)]
pub struct PermitSignRequest {
    /// Root key file.
    pub root_key: PathBuf,
    /// Deployment the permit applies to.
    pub deployment: warden_bus::DeploymentId,
    /// The one node it applies to, or every node of the deployment.
    pub node: Option<warden_bus::NodeId>,
    /// Component it applies to.
    pub component: warden_bus::messages::Component,
    /// Lowest release counter it allows.
    pub release_counter_min: u64,
    /// Validity, such as 2h.
    pub expires_in: String,
    /// Output file for the signed permit (base64 text).
    pub out: PathBuf,
}

/// Signs a rollback permit with the root key file and writes it as base64.
pub fn sign_permit(request: &PermitSignRequest) -> Result<RollbackPermit, CtlError> {
    let validity = parse_offset(&request.expires_in)?;
    if validity <= 0 || validity > PERMIT_VALIDITY_MAX_MS {
        return Err(local(format!(
            "--expires-in {} must be above 0 and at most 7d",
            request.expires_in
        )));
    }
    let key = read_key(&request.root_key)?;
    let now = SystemClock.now();
    let permit = RollbackPermit {
        deployment: request.deployment.clone(),
        node: request.node.clone(),
        component: request.component,
        release_counter_min: request.release_counter_min,
        issued_at: now,
        expires_at: offset(now, validity),
    };
    let bytes = SignedRollbackPermit::sign(&permit, &key)
        .map_err(|error| local(error.to_string()))?
        .encode()
        .map_err(|error| local(error.to_string()))?;
    std::fs::write(
        &request.out,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    )
    .map_err(|error| {
        local(format!(
            "failed to write {}: {error}",
            request.out.display()
        ))
    })?;
    Ok(permit)
}

/// Reads a manifest file written by [`sign_release`].
pub fn read_manifest(path: &Path) -> Result<SignedManifest, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| local(format!("failed to read {}: {error}", path.display())))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|error| {
            local(format!(
                "{} is not base64 ({error}); expected a manifest file written by `wardenctl release sign`",
                path.display()
            ))
        })?;
    SignedManifest::decode(&bytes).map_err(|error| local(format!("{}: {error}", path.display())))
}

/// Reads a trust document file written by [`sign_trust`].
pub fn read_trust(path: &Path) -> Result<SignedDocument, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| local(format!("failed to read {}: {error}", path.display())))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|error| {
            local(format!(
                "{} is not base64 ({error}); expected a trust document file written by `wardenctl trust sign`",
                path.display()
            ))
        })?;
    SignedDocument::decode(&bytes).map_err(|error| local(format!("{}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_signed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let release = create_key(&dir.path().join("release.key")).unwrap();
        std::fs::write(dir.path().join("artifact"), b"binary bytes").unwrap();
        let request = ReleaseSignRequest {
            release_key: dir.path().join("release.key"),
            artifact: dir.path().join("artifact"),
            component: warden_bus::messages::Component::Iggy,
            version: "0.8.1".into(),
            target: "x86_64-unknown-linux-gnu".into(),
            release_counter: 3,
            out: dir.path().join("manifest.b64"),
        };
        let manifest = sign_release(&request).unwrap();
        assert_eq!(manifest.size, 12);
        assert_eq!(
            hex::encode(&manifest.sha256),
            "4f463802bc436efdd9a0c4e8c999ec3d37450657bd50b579d796b58bc9d3f1ef"
        );
        let signed = read_manifest(&dir.path().join("manifest.b64")).unwrap();
        assert_eq!(signed.signature.key_id, *release.id());
        assert_eq!(signed.manifest_unverified().unwrap(), manifest);
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("30s").unwrap(), 30_000);
        assert_eq!(parse_offset("-1h").unwrap(), -3_600_000);
        assert_eq!(parse_offset("2d").unwrap(), 172_800_000);
        for bad in ["", "h", "10", "10y", "1.5h", "--1h"] {
            assert!(parse_offset(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sign_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = create_key(&dir.path().join("root.key")).unwrap();
        let task = create_key(&dir.path().join("task.key")).unwrap();
        assert!(
            create_key(&dir.path().join("root.key")).is_err(),
            "an existing key file must not be overwritten"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("root.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let request = TrustSignRequest {
            root_key: dir.path().join("root.key"),
            new_root_key: None,
            version: 3,
            expires_in: "30d".into(),
            task_keys: vec![format!("{},from=-1h,until=2d", task.public_key().to_hex())],
            release_keys: Vec::new(),
            out: dir.path().join("trust.b64"),
        };
        let view = sign_trust(&request).unwrap();
        assert_eq!(view.version, 3);
        assert_eq!(view.root_key_id, root.id().to_string());
        let signed = read_trust(&dir.path().join("trust.b64")).unwrap();
        let now = SystemClock.now();
        let document = signed
            .verify_initial(&root.public_key(), now, Duration::ZERO)
            .unwrap();
        let grant = &document.task_keys[0];
        assert!(
            grant.not_before < now
                && grant.not_after > now.saturating_add(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn trust_file_not_base64_names_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iggy.toml");
        std::fs::write(&path, "[system]\npath = \"local_data\"\n").unwrap();
        let error = read_trust(&path).unwrap_err().to_string();
        assert!(error.contains("wardenctl trust sign"), "{error}");
    }
}
