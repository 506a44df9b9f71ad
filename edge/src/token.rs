//! Access tokens: short-lived JWTs signed with Ed25519 by the home cell
//! (DESIGN.md §8).
//!
//! Hand-rolled on purpose instead of using a general JWT library: the only
//! algorithm is `EdDSA`, fixed in this file, so a token cannot talk the
//! verifier into `alg: none` or into HMAC-with-the-public-key, whatever its
//! header says. Verification is strict and never panics: every byte of a token
//! is attacker-controlled.
//!
//! Keys live in a PEM file (or the `CELL_JWT_KEYS` environment variable): the
//! first `PRIVATE KEY` block signs, later `PRIVATE KEY` / `PUBLIC KEY` blocks
//! only verify, so tokens signed before a rotation stay valid until they
//! expire. A line `retire-after: <unix seconds>` directly before a verify-only
//! block stops that key verifying after the given time.
//!
//! A line `active-after: <unix seconds>` before a `PRIVATE KEY` at the top
//! of the file stages it: it verifies at once and signs from that time on,
//! in place of the first unannotated key. Staged far enough ahead for the
//! file to reach every node, a rotation never has one node sign with a key
//! the others do not know yet (a rolling restart with the new key first
//! would: its tokens were refused by the others until they restarted too).

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The one accepted `alg`.
pub const ALGORITHM: &str = "EdDSA";
/// Longer tokens are rejected before any decoding, which bounds the work an
/// unauthenticated request can cause.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Tolerated clock skew between cells' nodes, for `exp` and `iat`.
pub const LEEWAY_SECS: i64 = 30;

const RETIRE_AFTER: &str = "retire-after:";
const ACTIVE_AFTER: &str = "active-after:";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";
const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";
/// Attacker-supplied strings echoed in errors are clipped so they cannot
/// flood logs.
const ECHO_LIMIT: usize = 64;

/// Who the bearer is; authorization is role plus ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Vendor,
    Driver,
    Ops,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Customer, Role::Vendor, Role::Driver, Role::Ops];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Vendor => "vendor",
            Role::Driver => "driver",
            Role::Ops => "ops",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected customer, vendor, driver or ops)")]
pub struct ParseRoleError(pub String);

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| ParseRoleError(clip(s)))
    }
}

/// The token payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Account id.
    pub sub: String,
    pub role: Role,
    /// The issuing (home) cell; a token is only accepted by that cell.
    pub cell: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// The login session (refresh family) the token was issued for, so
    /// that logout can end it without the refresh token. Absent on tokens
    /// minted outside a login (`cellctl token mint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Why a token was rejected. All of these mean `401` at the edge; the
/// variants exist for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported token algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    #[error("token signed by retired key {0:?}")]
    RetiredKey(String),
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token is for cell {found:?}, this is cell {expected:?}")]
    WrongCell { expected: String, found: String },
}

/// Why key material could not be loaded or stored. Messages never contain
/// key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid key material: {0}")]
    Invalid(String),
    #[error("no PRIVATE KEY block: a signing key is required")]
    NoSigningKey,
    #[error("key {0} appears more than once")]
    DuplicateKey(String),
}

impl KeyError {
    fn io(path: &Path, source: io::Error) -> Self {
        KeyError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An Ed25519 private key with its key id.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self::new(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    fn new(key: ed25519_dalek::SigningKey) -> Self {
        SigningKey {
            kid: kid_of(&key.verifying_key()),
            key,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    fn to_pem(&self) -> Result<String, KeyError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Invalid(format!("encoding a private key: {e}")))?;
        Ok(pem.as_str().to_owned())
    }
}

// Hand-written so that the secret half can never end up in a log.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Key id: the first 16 hex digits of SHA-256 over the raw public key, so
/// every node holding the same key derives the same id without coordination.
fn kid_of(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

#[derive(Debug, Clone)]
struct VerifyOnlyKey {
    kid: String,
    key: VerifyingKey,
    retire_after: Option<i64>,
    /// The private half when the file still holds it (a rotated-out
    /// signing key): what secrets derived under this key need. A
    /// `SigningKey`, whose `Debug` shows only its kid.
    private: Option<SigningKey>,
}

/// A key staged to sign from `after` on (see the module docs).
#[derive(Debug, Clone)]
struct StagedKey {
    key: SigningKey,
    after: i64,
    retire_after: Option<i64>,
}

/// The signing key of this cell plus the older public keys that still verify.
#[derive(Debug)]
pub struct KeySet {
    /// The first unannotated private key: it signs until a staged key's
    /// time comes.
    active: SigningKey,
    active_retire: Option<i64>,
    /// Newest first, as in the file.
    staged: Vec<StagedKey>,
    verify_only: Vec<VerifyOnlyKey>,
}

impl KeySet {
    /// A key set with one fresh key, held only in memory (tests, throw-away
    /// nodes).
    pub fn generate() -> Self {
        Self::of(SigningKey::generate())
    }

    fn of(active: SigningKey) -> Self {
        KeySet {
            active,
            active_retire: None,
            staged: Vec::new(),
            verify_only: Vec::new(),
        }
    }

    /// The key that signs at `now`: the newest staged key whose time has
    /// come (and that is not retired), else the first unannotated one.
    fn signer(&self, now: i64) -> &SigningKey {
        self.staged
            .iter()
            .find(|s| s.after <= now && s.retire_after.is_none_or(|r| now <= r))
            .map_or(&self.active, |s| &s.key)
    }

    /// Loads the key file, creating it with one fresh key (mode 0600) if it
    /// does not exist; `true` means it was created. See the module docs for
    /// the format.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match fs::read_to_string(path) {
            Ok(text) => {
                warn_if_exposed(path);
                Ok((Self::from_pem(&text)?, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let active = SigningKey::generate();
                let pem = active.to_pem()?;
                match write_file_atomically(path, pem.as_bytes(), false) {
                    Ok(()) => Ok((Self::of(active), true)),
                    // Someone else created it first; theirs wins.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let text = fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
                        Ok((Self::from_pem(&text)?, false))
                    }
                    Err(e) => Err(KeyError::io(path, e)),
                }
            }
            Err(e) => Err(KeyError::io(path, e)),
        }
    }

    /// Parses key material from PEM text (the key file's contents, or the
    /// `CELL_JWT_KEYS` environment variable).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let mut active: Option<SigningKey> = None;
        let mut active_retire = None;
        let mut staged = Vec::new();
        let mut verify_only = Vec::new();
        let mut seen = HashSet::new();
        for block in split_pem(pem)? {
            if block.active_after.is_some() && block.label != PRIVATE_KEY_LABEL {
                return Err(KeyError::Invalid(format!(
                    "line {}: {ACTIVE_AFTER} stages a PRIVATE KEY, not a {}",
                    block.line,
                    clip(&block.label)
                )));
            }
            let (kid, key, private) = match block.label.as_str() {
                PRIVATE_KEY_LABEL => {
                    let key =
                        ed25519_dalek::SigningKey::from_pkcs8_pem(&block.text).map_err(|e| {
                            KeyError::Invalid(format!(
                                "line {}: PRIVATE KEY is not a PKCS#8 Ed25519 key: {e}",
                                block.line
                            ))
                        })?;
                    let key = SigningKey::new(key);
                    if !seen.insert(key.kid.clone()) {
                        return Err(KeyError::DuplicateKey(key.kid));
                    }
                    // Below the first unannotated key a staged key never
                    // signs (a newer key above it does): it only verifies.
                    if let Some(after) = block.active_after.filter(|_| active.is_none()) {
                        staged.push(StagedKey {
                            key,
                            after,
                            retire_after: block.retire_after,
                        });
                        continue;
                    }
                    if active.is_none() {
                        // It may retire only once a staged key has taken
                        // over from it: something must always sign.
                        if let Some(at) = block.retire_after {
                            if !staged.iter().any(|s| s.after <= at) {
                                return Err(KeyError::Invalid(format!(
                                    "line {}: the signing (first unannotated) PRIVATE KEY cannot \
                                     be retired before a staged key takes over",
                                    block.line
                                )));
                            }
                        }
                        active_retire = block.retire_after;
                        active = Some(key);
                        continue;
                    }
                    (key.kid.clone(), key.verifying_key(), Some(key))
                }
                PUBLIC_KEY_LABEL => {
                    let key = VerifyingKey::from_public_key_pem(&block.text).map_err(|e| {
                        KeyError::Invalid(format!(
                            "line {}: PUBLIC KEY is not an Ed25519 key: {e}",
                            block.line
                        ))
                    })?;
                    let kid = kid_of(&key);
                    if !seen.insert(kid.clone()) {
                        return Err(KeyError::DuplicateKey(kid));
                    }
                    (kid, key, None)
                }
                other => {
                    return Err(KeyError::Invalid(format!(
                        "line {}: unsupported PEM block {:?} (expected PRIVATE KEY or PUBLIC KEY)",
                        block.line,
                        clip(other)
                    )))
                }
            };
            verify_only.push(VerifyOnlyKey {
                kid,
                key,
                retire_after: block.retire_after,
                private,
            });
        }
        let active = active.ok_or(KeyError::NoSigningKey)?;
        Ok(KeySet {
            active,
            active_retire,
            staged,
            verify_only,
        })
    }

    /// Rotation: prepends a fresh key to the key file, so it signs from now
    /// on while the previous keys keep verifying. Returns the new kid. Nodes
    /// pick the change up when they reload the file. Read-modify-write: two
    /// concurrent rotations of one file can lose a key.
    pub fn rotate_file(path: &Path) -> Result<String, KeyError> {
        Self::rotate_file_with_retirement(path, None)
    }

    /// Like [`KeySet::rotate_file`], and marks the previously active key
    /// `retire-after: <unix seconds>` (typically now + the access-token
    /// lifetime + leeway), after which tokens it signed are refused.
    pub fn rotate_file_with_retirement(
        path: &Path,
        retire_after: Option<i64>,
    ) -> Result<String, KeyError> {
        Self::rotate_file_staged(path, None, retire_after)
    }

    /// Like [`KeySet::rotate_file_with_retirement`], with the new key staged
    /// to sign from `active_after` (unix seconds) on: copy the file to every
    /// node and restart them (or let them load it) before then.
    pub fn rotate_file_staged(
        path: &Path,
        active_after: Option<i64>,
        retire_after: Option<i64>,
    ) -> Result<String, KeyError> {
        let old = fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
        // Refuse to build on top of a file that would not load anyway.
        Self::from_pem(&old)?;
        let new = SigningKey::generate();
        let mut text = String::new();
        if let Some(at) = active_after {
            text.push_str(&format!("{ACTIVE_AFTER} {at}\n"));
        }
        text.push_str(&new.to_pem()?);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut annotated = false;
        for line in old.lines() {
            if !annotated && line.trim() == begin_line(PRIVATE_KEY_LABEL) {
                if let Some(at) = retire_after {
                    text.push_str(&format!("{RETIRE_AFTER} {at}\n"));
                }
                annotated = true;
            }
            text.push_str(line);
            text.push('\n');
        }
        let check = Self::from_pem(&text)?;
        let signs_from = active_after.unwrap_or_else(unix_now);
        if check.signer(signs_from).kid() != new.kid() {
            return Err(KeyError::Invalid(
                "rotated key file does not start with the new key".into(),
            ));
        }
        write_file_atomically(path, text.as_bytes(), true).map_err(|e| KeyError::io(path, e))?;
        Ok(new.kid)
    }

    /// The key id that signs now.
    pub fn active_kid(&self) -> &str {
        self.signer(unix_now()).kid()
    }

    /// Every private key the file holds, with its kid.
    fn private_keys(&self) -> impl Iterator<Item = &SigningKey> {
        std::iter::once(&self.active)
            .chain(self.staged.iter().map(|s| &s.key))
            .chain(self.verify_only.iter().filter_map(|k| k.private.as_ref()))
    }

    /// A 32-byte secret for `purpose`, derived from the active signing key:
    /// every node holding the same key file derives the same secret without
    /// coordination (nothing secret enters the replicated log), and it
    /// changes when the signing key rotates.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        derive(purpose, &self.signer(unix_now()).key.to_bytes())
    }

    /// The secrets for `purpose` of every private key the file holds, the
    /// signing key's first: what opens something sealed just before a
    /// rotation (or on a node whose clock is past it).
    pub fn derive_secrets(&self, purpose: &str) -> Vec<[u8; 32]> {
        let signer = self.signer(unix_now());
        std::iter::once(signer)
            .chain(self.private_keys().filter(|k| k.kid != signer.kid))
            .map(|k| derive(purpose, &k.key.to_bytes()))
            .collect()
    }

    /// The secret for `purpose` derived from the key `kid`, the active one
    /// or an older one whose private half the key file still holds (so
    /// what was sealed before a rotation can still be opened); `None` once
    /// that key is gone.
    pub fn derive_secret_for(&self, kid: &str, purpose: &str) -> Option<[u8; 32]> {
        self.private_keys()
            .find(|k| k.kid == kid)
            .map(|private| derive(purpose, &private.key.to_bytes()))
    }

    /// Signs with the key that signs at the claims' `iat`. Claims are
    /// trusted input here; keep them small enough that the token stays under
    /// [`MAX_TOKEN_LEN`].
    pub fn sign(&self, claims: &Claims) -> String {
        let signer = self.signer(claims.iat);
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'static str,
            typ: &'static str,
            kid: &'a str,
        }
        let header = Header {
            alg: ALGORITHM,
            typ: "JWT",
            kid: signer.kid(),
        };
        // Serializing plain strings and integers cannot fail.
        let header = serde_json::to_vec(&header).expect("JWT header serializes");
        let payload = serde_json::to_vec(claims).expect("JWT claims serialize");
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = signer.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        token
    }

    /// Verifies a token issued for `expected_cell` at time `now_unix`.
    pub fn verify(
        &self,
        token: &str,
        now_unix: i64,
        expected_cell: &str,
    ) -> Result<Claims, TokenError> {
        verify_with(token, now_unix, expected_cell, |kid| {
            self.verifying_key(kid, now_unix)
        })
    }

    fn verifying_key(&self, kid: &str, now_unix: i64) -> Result<VerifyingKey, TokenError> {
        let retired = |at: Option<i64>| at.is_some_and(|at| now_unix > at);
        if kid == self.active.kid() {
            if retired(self.active_retire) {
                return Err(TokenError::RetiredKey(kid.to_owned()));
            }
            return Ok(self.active.verifying_key());
        }
        if let Some(s) = self.staged.iter().find(|s| s.key.kid == kid) {
            if retired(s.retire_after) {
                return Err(TokenError::RetiredKey(kid.to_owned()));
            }
            return Ok(s.key.verifying_key());
        }
        let key = self
            .verify_only
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| TokenError::UnknownKey(clip(kid)))?;
        match key.retire_after {
            Some(at) if now_unix > at => Err(TokenError::RetiredKey(key.kid.clone())),
            _ => Ok(key.key),
        }
    }

    /// The public keys as a JWK set (RFC 8037 `OKP`), for
    /// `/.well-known/jwks.json`; the key that signs now comes first, staged
    /// keys are listed before they sign.
    pub fn jwks(&self) -> Value {
        let signer = self.signer(unix_now());
        let others = std::iter::once(&self.active)
            .chain(self.staged.iter().map(|s| &s.key))
            .filter(|k| k.kid != signer.kid)
            .map(|k| (k.kid(), k.verifying_key()));
        let keys: Vec<Value> = std::iter::once((signer.kid(), signer.verifying_key()))
            .chain(others)
            .chain(self.verify_only.iter().map(|k| (k.kid.as_str(), k.key)))
            .map(|(kid, key)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
                    "kid": kid,
                    "alg": ALGORITHM,
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Another cell's public keys, read from its JWK set: what a router holds to
/// verify tokens it did not issue.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys {
    keys: Vec<(String, VerifyingKey)>,
}

/// More keys than a cell could plausibly publish means a broken or hostile
/// endpoint.
const MAX_JWKS_KEYS: usize = 64;

impl PublicKeys {
    /// Parses a JWK set as served at `/.well-known/jwks.json`. Only Ed25519
    /// `OKP` keys whose `kid` matches their key bytes are taken; anything else
    /// makes the whole set invalid, since a half-understood set would fail in
    /// confusing ways later.
    pub fn from_jwks(jwks: &Value) -> Result<Self, KeyError> {
        let Some(entries) = jwks.get("keys").and_then(Value::as_array) else {
            return Err(KeyError::Invalid("JWK set has no keys array".into()));
        };
        if entries.len() > MAX_JWKS_KEYS {
            return Err(KeyError::Invalid(format!(
                "JWK set has more than {MAX_JWKS_KEYS} keys"
            )));
        }
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let field = |name: &str| entry.get(name).and_then(Value::as_str);
            if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
                return Err(KeyError::Invalid("JWK is not an Ed25519 OKP key".into()));
            }
            let (Some(kid), Some(x)) = (field("kid"), field("x")) else {
                return Err(KeyError::Invalid("JWK without kid or x".into()));
            };
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError::Invalid("JWK x is not 32 base64url bytes".into()))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| KeyError::Invalid("JWK x is not an Ed25519 point".into()))?;
            if kid_of(&key) != kid {
                return Err(KeyError::Invalid(format!(
                    "JWK kid {:?} does not match its key",
                    clip(kid)
                )));
            }
            keys.push((kid.to_owned(), key));
        }
        Ok(PublicKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a token issued by the cell these keys belong to.
    pub fn verify(
        &self,
        token: &str,
        now_unix: i64,
        expected_cell: &str,
    ) -> Result<Claims, TokenError> {
        verify_with(token, now_unix, expected_cell, |kid| {
            self.keys
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, key)| *key)
                .ok_or_else(|| TokenError::UnknownKey(clip(kid)))
        })
    }
}

/// The `cell` claim of a token, read WITHOUT verifying anything: only for
/// choosing whose keys to verify it with. `None` when the token is not shaped
/// like one of ours.
pub fn unverified_cell(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(Deserialize)]
    struct CellOnly {
        cell: String,
    }
    serde_json::from_slice::<CellOnly>(&payload)
        .ok()
        .map(|c| c.cell)
}

fn derive(purpose: &str, private: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"marketcell derived secret\0");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(private);
    h.finalize().into()
}

/// Verifies `token` for `expected_cell` at `now_unix`, taking the key for
/// the header's `kid` from `key_for`.
///
/// The signature is checked before the claims are even parsed, so
/// unauthenticated payloads never reach the claims parser.
fn verify_with(
    token: &str,
    now_unix: i64,
    expected_cell: &str,
    key_for: impl FnOnce(&str) -> Result<VerifyingKey, TokenError>,
) -> Result<Claims, TokenError> {
    if token.is_empty() {
        return Err(malformed("empty token"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!("longer than {MAX_TOKEN_LEN} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let header = decode_part(header_b64, "header")?;
    let payload = decode_part(payload_b64, "payload")?;
    let signature = decode_part(signature_b64, "signature")?;

    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| malformed("header is not a JSON object"))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ALGORITHM => {}
        Some(Value::String(alg)) => return Err(TokenError::UnsupportedAlgorithm(clip(alg))),
        Some(other) => return Err(TokenError::UnsupportedAlgorithm(clip(&other.to_string()))),
        None => return Err(malformed("header has no alg")),
    }
    // Only what we issue: an unknown field such as `crit`, `jku` or `x5u`
    // would ask for semantics we do not implement.
    for (name, value) in &header {
        match name.as_str() {
            "alg" | "kid" => {}
            "typ" if value.as_str() == Some("JWT") => {}
            "typ" => return Err(malformed("header typ is not JWT")),
            other => {
                return Err(malformed(format!(
                    "unexpected header field {:?}",
                    clip(other)
                )))
            }
        }
    }
    let Some(Value::String(kid)) = header.get("kid") else {
        return Err(malformed("header has no kid"));
    };
    let key = key_for(kid)?;

    let signature: [u8; ed25519_dalek::SIGNATURE_LENGTH] = signature
        .as_slice()
        .try_into()
        .map_err(|_| malformed("signature is not 64 bytes"))?;
    let signature = Signature::from_bytes(&signature);
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    // verify_strict rejects small-order keys and non-canonical
    // signatures, so a signature cannot be malleated into a second
    // valid token.
    key.verify_strict(signed.as_bytes(), &signature)
        .map_err(|_| TokenError::BadSignature)?;

    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|e| malformed(format!("claims: {e}")))?;
    if claims.exp.saturating_add(LEEWAY_SECS) <= now_unix {
        return Err(TokenError::Expired);
    }
    if claims.iat > now_unix.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::NotYetValid);
    }
    if claims.cell != expected_cell {
        return Err(TokenError::WrongCell {
            expected: expected_cell.to_owned(),
            found: clip(&claims.cell),
        });
    }
    Ok(claims)
}

fn malformed(why: impl Into<String>) -> TokenError {
    TokenError::Malformed(why.into())
}

/// The URL-safe alphabet without padding, canonical trailing bits only: a
/// token has exactly one accepted spelling.
fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("{what} is not base64url without padding")))
}

fn clip(s: &str) -> String {
    s.chars().take(ECHO_LIMIT).collect()
}

fn begin_line(label: &str) -> String {
    format!("-----BEGIN {label}-----")
}

struct PemBlock {
    label: String,
    /// The block normalized to `\n` line endings, BEGIN to END inclusive.
    text: String,
    /// 1-based line of the BEGIN line, for error messages.
    line: usize,
    retire_after: Option<i64>,
    active_after: Option<i64>,
}

/// Splits PEM text into blocks. Blank lines and `#` comments between blocks
/// are allowed; any other stray text is an error, because in a key file it
/// most likely means a truncated or mangled paste.
fn split_pem(text: &str) -> Result<Vec<PemBlock>, KeyError> {
    let mut blocks = Vec::new();
    let mut current: Option<PemBlock> = None;
    let mut retire_after: Option<i64> = None;
    let mut active_after: Option<i64> = None;
    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        let line = line.trim();
        if let Some(block) = current.as_mut() {
            if line.starts_with("-----BEGIN ") {
                return Err(KeyError::Invalid(format!(
                    "line {n}: BEGIN inside the block started on line {}",
                    block.line
                )));
            }
            block.text.push_str(line);
            block.text.push('\n');
            if line == format!("-----END {}-----", block.label) {
                blocks.extend(current.take());
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for (prefix, slot) in [
            (RETIRE_AFTER, &mut retire_after),
            (ACTIVE_AFTER, &mut active_after),
        ] {
            if let Some(at) = line.strip_prefix(prefix) {
                let at = at.trim().parse::<i64>().map_err(|_| {
                    KeyError::Invalid(format!("line {n}: {prefix} needs unix seconds"))
                })?;
                if slot.replace(at).is_some() {
                    return Err(KeyError::Invalid(format!(
                        "line {n}: two {prefix} lines for one block"
                    )));
                }
            }
        }
        if line.starts_with(RETIRE_AFTER) || line.starts_with(ACTIVE_AFTER) {
            continue;
        }
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            current = Some(PemBlock {
                label: label.to_owned(),
                text: format!("{line}\n"),
                line: n,
                retire_after: retire_after.take(),
                active_after: active_after.take(),
            });
            continue;
        }
        return Err(KeyError::Invalid(format!(
            "line {n}: unexpected text outside a PEM block"
        )));
    }
    if let Some(block) = current {
        return Err(KeyError::Invalid(format!(
            "line {}: {} block has no END line",
            block.line,
            clip(&block.label)
        )));
    }
    if retire_after.is_some() || active_after.is_some() {
        return Err(KeyError::Invalid(format!(
            "a {RETIRE_AFTER} or {ACTIVE_AFTER} line is not followed by a key"
        )));
    }
    Ok(blocks)
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "JWT key file is accessible to group or others; it should be mode 0600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

/// Writes through a 0600 temporary file in the same directory so readers
/// never see a half-written key file and the secret is never briefly
/// world-readable. Without `replace`, an existing file is left alone and
/// `AlreadyExists` is returned.
fn write_file_atomically(path: &Path, contents: &[u8], replace: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        if replace {
            fs::rename(&tmp, path)
        } else {
            // A hard link fails if the target exists, unlike rename.
            fs::hard_link(&tmp, path).map(|()| {
                let _ = fs::remove_file(&tmp);
            })
        }
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CELL: &str = "eu-west";
    const NOW: i64 = 1_700_000_000;

    #[test]
    fn derived_secrets_follow_the_key_and_the_purpose() {
        let pem = SigningKey::generate().to_pem().unwrap();
        let keys = KeySet::from_pem(&pem).unwrap();
        let same = KeySet::from_pem(&pem).unwrap();
        assert_eq!(keys.derive_secret("a"), same.derive_secret("a"));
        assert_ne!(keys.derive_secret("a"), keys.derive_secret("b"));
        assert_ne!(
            keys.derive_secret("a"),
            KeySet::generate().derive_secret("a")
        );
    }

    #[test]
    fn secrets_derived_under_a_rotated_out_key_stay_derivable_while_the_file_holds_it() {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        let (before, _) = KeySet::load_or_create(&path).unwrap();
        let old_kid = before.active_kid().to_string();
        KeySet::rotate_file(&path).unwrap();
        let (after, _) = KeySet::load_or_create(&path).unwrap();
        assert_ne!(after.active_kid(), old_kid);
        assert_eq!(
            after.derive_secret_for(&old_kid, "p"),
            Some(before.derive_secret("p"))
        );
        assert_eq!(
            after.derive_secret_for(after.active_kid(), "p"),
            Some(after.derive_secret("p"))
        );
        assert_eq!(after.derive_secret_for("nope", "p"), None);
        // A public key alone derives nothing.
        let public_only = format!(
            "{}{}",
            SigningKey::generate().to_pem().unwrap(),
            before
                .verifying_key(&old_kid, 0)
                .unwrap()
                .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .unwrap()
        );
        let keys = KeySet::from_pem(&public_only).unwrap();
        assert_eq!(keys.derive_secret_for(&old_kid, "p"), None);
    }

    fn claims() -> Claims {
        Claims {
            sub: "01HZX3N6W9Q8K2M4P5R7T9V1XB".into(),
            role: Role::Customer,
            cell: CELL.into(),
            exp: NOW + 900,
            iat: NOW,
            jti: "01HZX3N6W9Q8K2M4P5R7T9V1XC".into(),
            sid: None,
        }
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a token with an arbitrary header and payload, signed by `key`.
    fn forge(header: &Value, payload: &[u8], key: &ed25519_dalek::SigningKey) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(payload));
        let signature = key.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn header_of(token: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts(token)[0]).unwrap()).unwrap()
    }

    #[test]
    fn public_keys_from_jwks_verify_like_the_issuer() {
        let keys = KeySet::generate();
        let token = keys.sign(&claims());
        let public = PublicKeys::from_jwks(&keys.jwks()).unwrap();
        assert_eq!(public.len(), 1);
        let now = NOW + 1;
        assert_eq!(public.verify(&token, now, CELL).unwrap(), claims());
        assert!(matches!(
            public.verify(&token, now, "elsewhere"),
            Err(TokenError::WrongCell { .. })
        ));
        assert_eq!(unverified_cell(&token).as_deref(), Some(CELL));
        assert_eq!(unverified_cell("not.a.token"), None);
        assert_eq!(unverified_cell(""), None);

        let other = KeySet::generate();
        let foreign = PublicKeys::from_jwks(&other.jwks()).unwrap();
        assert!(matches!(
            foreign.verify(&token, now, CELL),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn jwks_with_lying_kid_or_junk_is_refused() {
        let keys = KeySet::generate();
        let mut jwks = keys.jwks();
        jwks["keys"][0]["kid"] = Value::from("0000000000000000");
        assert!(PublicKeys::from_jwks(&jwks).is_err());
        for junk in [
            serde_json::json!({}),
            serde_json::json!({"keys": 5}),
            serde_json::json!({"keys": [{"kty": "RSA"}]}),
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": "!!"}]}),
        ] {
            assert!(PublicKeys::from_jwks(&junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn sign_verify_roundtrip() {
        let keys = KeySet::generate();
        let token = keys.sign(&claims());
        assert_eq!(keys.verify(&token, NOW, CELL), Ok(claims()));
        let header = header_of(&token);
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], keys.active_kid());
        assert_eq!(keys.active_kid().len(), 16);
        assert!(keys.active_kid().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn expiry_with_leeway() {
        let keys = KeySet::generate();
        let token = keys.sign(&claims());
        let exp = claims().exp;
        assert!(keys.verify(&token, exp + LEEWAY_SECS - 1, CELL).is_ok());
        assert_eq!(
            keys.verify(&token, exp + LEEWAY_SECS, CELL),
            Err(TokenError::Expired)
        );
        let mut extreme = claims();
        extreme.exp = i64::MIN;
        let token = keys.sign(&extreme);
        assert_eq!(keys.verify(&token, NOW, CELL), Err(TokenError::Expired));
    }

    #[test]
    fn issued_in_the_future() {
        let keys = KeySet::generate();
        let mut c = claims();
        c.iat = NOW + LEEWAY_SECS;
        assert!(keys.verify(&keys.sign(&c), NOW, CELL).is_ok());
        c.iat = NOW + 3600;
        c.exp = NOW + 7200;
        assert_eq!(
            keys.verify(&keys.sign(&c), NOW, CELL),
            Err(TokenError::NotYetValid)
        );
        // Extreme values must not overflow the leeway arithmetic.
        c.iat = i64::MAX;
        c.exp = i64::MAX;
        assert_eq!(
            keys.verify(&keys.sign(&c), i64::MAX - 1, CELL),
            Ok(c.clone())
        );
        assert_eq!(
            keys.verify(&keys.sign(&c), NOW, CELL),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn flipped_signature_byte() {
        let keys = KeySet::generate();
        let p = parts(&keys.sign(&claims()));
        let mut signature = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
        for i in [0, 31, 63] {
            signature[i] ^= 0x01;
            let token = format!("{}.{}.{}", p[0], p[1], b64(&signature));
            assert_eq!(
                keys.verify(&token, NOW, CELL),
                Err(TokenError::BadSignature)
            );
            signature[i] ^= 0x01;
        }
    }

    #[test]
    fn other_key_claiming_our_kid() {
        let keys = KeySet::generate();
        let attacker = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": keys.active_kid()});
        let payload = serde_json::to_vec(&claims()).unwrap();
        let token = forge(&header, &payload, &attacker);
        assert_eq!(
            keys.verify(&token, NOW, CELL),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unknown_kid_and_missing_kid() {
        let keys = KeySet::generate();
        let other = KeySet::generate();
        let token = other.sign(&claims());
        assert_eq!(
            keys.verify(&token, NOW, CELL),
            Err(TokenError::UnknownKey(other.active_kid().to_owned()))
        );
        let payload = serde_json::to_vec(&claims()).unwrap();
        let token = forge(
            &serde_json::json!({"alg": "EdDSA", "typ": "JWT"}),
            &payload,
            &keys.active.key,
        );
        assert!(matches!(
            keys.verify(&token, NOW, CELL),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let keys = KeySet::generate();
        let payload = serde_json::to_vec(&claims()).unwrap();
        for header in [
            serde_json::json!({"alg": "none", "typ": "JWT"}),
            serde_json::json!({"alg": "none", "typ": "JWT", "kid": keys.active_kid()}),
        ] {
            let token = format!("{}.{}.", b64(header.to_string()), b64(&payload));
            assert_eq!(
                keys.verify(&token, NOW, CELL),
                Err(TokenError::UnsupportedAlgorithm("none".into()))
            );
        }
        for alg in [
            serde_json::json!("NONE"),
            serde_json::json!("eddsa"),
            serde_json::json!("Ed25519"),
            serde_json::json!(null),
            serde_json::json!(["EdDSA"]),
        ] {
            let header = serde_json::json!({"alg": alg, "kid": keys.active_kid()});
            let token = forge(&header, &payload, &keys.active.key);
            assert!(matches!(
                keys.verify(&token, NOW, CELL),
                Err(TokenError::UnsupportedAlgorithm(_))
            ));
        }
    }

    #[test]
    fn hs256_with_public_key_as_secret_is_refused() {
        let keys = KeySet::generate();
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": keys.active_kid()});
        let input = format!(
            "{}.{}",
            b64(header.to_string()),
            b64(serde_json::to_vec(&claims()).unwrap())
        );
        // Stand-in for HMAC keyed with the public key: any MAC a confused
        // verifier would accept.
        let mut mac = Sha256::new();
        mac.update(keys.active.verifying_key().as_bytes());
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", b64(mac.finalize()));
        assert_eq!(
            keys.verify(&token, NOW, CELL),
            Err(TokenError::UnsupportedAlgorithm("HS256".into()))
        );
    }

    #[test]
    fn tampered_claims() {
        let keys = KeySet::generate();
        let p = parts(&keys.sign(&claims()));
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).unwrap()).unwrap();
        payload["role"] = Value::from("ops");
        let token = format!("{}.{}.{}", p[0], b64(payload.to_string()), p[2]);
        assert_eq!(
            keys.verify(&token, NOW, CELL),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn wrong_cell() {
        let keys = KeySet::generate();
        let token = keys.sign(&claims());
        assert_eq!(
            keys.verify(&token, NOW, "us-east"),
            Err(TokenError::WrongCell {
                expected: "us-east".into(),
                found: CELL.into()
            })
        );
    }

    #[test]
    fn strict_header_and_claims() {
        let keys = KeySet::generate();
        let kid = keys.active_kid().to_owned();
        let payload = serde_json::to_vec(&claims()).unwrap();
        for header in [
            serde_json::json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
            serde_json::json!({"alg": "EdDSA", "kid": kid, "jku": "https://evil"}),
            serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "at+jwt"}),
            serde_json::json!({"alg": "EdDSA", "kid": 7}),
            serde_json::json!(["EdDSA"]),
        ] {
            let token = forge(&header, &payload, &keys.active.key);
            assert!(
                matches!(
                    keys.verify(&token, NOW, CELL),
                    Err(TokenError::Malformed(_))
                ),
                "{header}"
            );
        }
        // Without `typ` is fine: it is optional in RFC 7519.
        let token = forge(
            &serde_json::json!({"alg": "EdDSA", "kid": kid}),
            &payload,
            &keys.active.key,
        );
        assert!(keys.verify(&token, NOW, CELL).is_ok());

        let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
        let mut extra = serde_json::to_value(claims()).unwrap();
        extra["admin"] = Value::from(true);
        let mut bad_role = serde_json::to_value(claims()).unwrap();
        bad_role["role"] = Value::from("root");
        let mut missing = serde_json::to_value(claims()).unwrap();
        missing.as_object_mut().unwrap().remove("jti");
        for payload in [extra, bad_role, missing] {
            let token = forge(&header, payload.to_string().as_bytes(), &keys.active.key);
            assert!(matches!(
                keys.verify(&token, NOW, CELL),
                Err(TokenError::Malformed(_))
            ));
        }
        let duplicate = br#"{"sub":"a","role":"customer","role":"ops","cell":"eu-west","exp":1700000900,"iat":1700000000,"jti":"j"}"#;
        let token = forge(&header, duplicate, &keys.active.key);
        assert!(matches!(
            keys.verify(&token, NOW, CELL),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let keys = KeySet::generate();
        let token = keys.sign(&claims());
        let p = parts(&token);
        let cases = [
            String::new(),
            "abc".into(),
            ".".into(),
            "..".into(),
            "...".into(),
            format!("{}.{}", p[0], p[1]),
            format!("{token}.{}", p[2]),
            format!("{}.{}.{}", p[0], "!!!", p[2]),
            format!("{}.{}.{}", "***", p[1], p[2]),
            format!("{}.{}.{}", p[0], p[1], "a+b/"),
            format!("{}=.{}.{}", p[0], p[1], p[2]),
            format!("{}.{}.{}", p[0], p[1], &p[2][..10]),
            format!("{}.{}.{}", b64("not json"), p[1], p[2]),
            format!("{}.{}.{}", b64("{\"alg\":"), p[1], p[2]),
            format!("{}.{}.{}", p[0], p[1], "é"),
            "a".repeat(MAX_TOKEN_LEN + 1),
            format!("{token}{}", "A".repeat(MAX_TOKEN_LEN)),
            "\0.\0.\0".into(),
        ];
        for case in cases {
            let result = keys.verify(&case, NOW, CELL);
            assert!(
                matches!(result, Err(TokenError::Malformed(_))),
                "{:?}: {result:?}",
                clip(&case)
            );
        }
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let keys = KeySet::generate();
        let token = keys.sign(&claims());
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'A', b'.', b'_', 0xff] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut mutated = bytes.to_vec();
                mutated[i] = replacement;
                let mutated = String::from_utf8_lossy(&mutated);
                assert!(keys.verify(&mutated, NOW, CELL).is_err(), "position {i}");
            }
        }
        for len in 0..token.len() {
            assert!(keys.verify(&token[..len], NOW, CELL).is_err());
        }
    }

    #[test]
    fn key_file_create_load_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-keys.pem");

        let (keys, created) = KeySet::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = KeySet::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.active_kid(), keys.active_kid());
        let old_kid = keys.active_kid().to_owned();
        let old_token = keys.sign(&claims());

        let new_kid = KeySet::rotate_file(&path).unwrap();
        assert_ne!(new_kid, old_kid);
        let (rotated, created) = KeySet::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(rotated.active_kid(), new_kid);
        assert_eq!(rotated.verify(&old_token, NOW, CELL), Ok(claims()));
        let new_token = rotated.sign(&claims());
        assert_eq!(header_of(&new_token)["kid"], new_kid.as_str());
        assert_eq!(rotated.verify(&new_token, NOW, CELL), Ok(claims()));
        // A node that has not reloaded yet does not know the new key.
        assert_eq!(
            keys.verify(&new_token, NOW, CELL),
            Err(TokenError::UnknownKey(new_kid.clone()))
        );

        let jwks = rotated.jwks();
        let listed: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [new_kid.as_str(), old_kid.as_str()]);
        let first = &jwks["keys"][0];
        assert_eq!(first["kty"], "OKP");
        assert_eq!(first["crv"], "Ed25519");
        assert_eq!(first["alg"], "EdDSA");
        assert_eq!(first["use"], "sig");
        let x = URL_SAFE_NO_PAD
            .decode(first["x"].as_str().unwrap())
            .unwrap();
        assert_eq!(x, rotated.active.verifying_key().as_bytes());

        let newest = KeySet::rotate_file_with_retirement(&path, Some(NOW + 100)).unwrap();
        let (thrice, _) = KeySet::load_or_create(&path).unwrap();
        assert_eq!(thrice.active_kid(), newest);
        assert_eq!(thrice.jwks()["keys"].as_array().unwrap().len(), 3);
        let mut long_lived = claims();
        long_lived.exp = NOW + 10_000;
        let middle_token = rotated.sign(&long_lived);
        assert!(thrice.verify(&middle_token, NOW + 100, CELL).is_ok());
        assert_eq!(
            thrice.verify(&middle_token, NOW + 101, CELL),
            Err(TokenError::RetiredKey(new_kid.clone()))
        );
        // The oldest key carries no retirement and still verifies.
        assert_eq!(thrice.verify(&old_token, NOW, CELL), Ok(claims()));
    }

    #[test]
    fn rotate_refuses_missing_or_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        assert!(matches!(
            KeySet::rotate_file(&path),
            Err(KeyError::Io { .. })
        ));
        fs::write(&path, "garbage\n").unwrap();
        assert!(matches!(
            KeySet::rotate_file(&path),
            Err(KeyError::Invalid(_))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), "garbage\n");
    }

    #[test]
    fn pem_with_public_only_keys() {
        let active = SigningKey::generate();
        let destroyed = SigningKey::generate();
        let public = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &destroyed.verifying_key(),
            LineEnding::CRLF,
        )
        .unwrap();
        let text = format!(
            "# comment\n\n{}\n{RETIRE_AFTER} {}\n{public}",
            active.to_pem().unwrap(),
            NOW + 5
        );
        let keys = KeySet::from_pem(&text).unwrap();
        assert_eq!(keys.active_kid(), active.kid());
        let old = KeySet::of(destroyed);
        let token = old.sign(&claims());
        assert_eq!(keys.verify(&token, NOW, CELL), Ok(claims()));
        assert_eq!(
            keys.verify(&token, NOW + 6, CELL),
            Err(TokenError::RetiredKey(old.active_kid().to_owned()))
        );
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_staged_key_verifies_at_once_and_signs_from_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        let (first, _) = KeySet::load_or_create(&path).unwrap();
        let a = first.active_kid().to_owned();
        let at = |t: i64| Claims {
            iat: t,
            exp: t + 900,
            ..claims()
        };
        // Staged 100 s ahead; the old key retires once its last tokens
        // (signed just before the switch) have expired.
        let b = KeySet::rotate_file_staged(&path, Some(NOW + 100), Some(NOW + 1060)).unwrap();
        let keys = KeySet::load_or_create(&path).unwrap().0;
        let before = keys.sign(&at(NOW + 99));
        let after = keys.sign(&at(NOW + 100));
        assert_eq!(header_of(&before)["kid"], a.as_str());
        assert_eq!(header_of(&after)["kid"], b.as_str());
        // Every node holding the file verifies both, before and after.
        assert_eq!(keys.verify(&after, NOW + 100, CELL), Ok(at(NOW + 100)));
        assert_eq!(keys.verify(&before, NOW + 500, CELL), Ok(at(NOW + 99)));
        assert_eq!(
            keys.verify(&keys.sign(&at(NOW + 1000)), NOW + 1061, CELL),
            Ok(at(NOW + 1000))
        );
        assert_eq!(
            keys.verify(&keys.sign(&at(NOW + 99)), NOW + 1061, CELL),
            Err(TokenError::RetiredKey(a.clone()))
        );
        let listed = keys.jwks()["keys"].as_array().unwrap().len();
        assert_eq!(listed, 2);
        assert_eq!(
            keys.derive_secret_for(&b, "p"),
            Some(derive("p", &keys.staged[0].key.key.to_bytes()))
        );

        // A second staged rotation takes over from the first at its time.
        let c = KeySet::rotate_file_staged(&path, Some(NOW + 200), None).unwrap();
        let keys = KeySet::load_or_create(&path).unwrap().0;
        assert_eq!(header_of(&keys.sign(&at(NOW + 150)))["kid"], b.as_str());
        assert_eq!(header_of(&keys.sign(&at(NOW + 250)))["kid"], c.as_str());
        assert_eq!(header_of(&keys.sign(&at(NOW + 50)))["kid"], a.as_str());

        // An immediate rotation on top of staged keys signs at once; the
        // staged keys below it only verify.
        let d = KeySet::rotate_file(&path).unwrap();
        let keys = KeySet::load_or_create(&path).unwrap().0;
        for t in [NOW, NOW + 150, NOW + 250] {
            assert_eq!(header_of(&keys.sign(&at(t)))["kid"], d.as_str());
        }
        assert_eq!(keys.jwks()["keys"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn staging_and_retiring_keys_must_leave_a_signer() {
        let (a, b) = (SigningKey::generate(), SigningKey::generate());
        let (a, b) = (a.to_pem().unwrap(), b.to_pem().unwrap());
        let public = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &SigningKey::generate().verifying_key(),
            LineEnding::LF,
        )
        .unwrap();
        for bad in [
            // The signing key retired with nothing to take over.
            format!("{RETIRE_AFTER} {NOW}\n{a}"),
            // Taken over only after it retired.
            format!("{ACTIVE_AFTER} {}\n{b}{RETIRE_AFTER} {NOW}\n{a}", NOW + 1),
            // A public key staged.
            format!("{ACTIVE_AFTER} {NOW}\n{public}{a}"),
            // Only staged keys.
            format!("{ACTIVE_AFTER} {NOW}\n{a}"),
        ] {
            assert!(KeySet::from_pem(&bad).is_err(), "{bad}");
        }
        let good = format!("{ACTIVE_AFTER} {NOW}\n{b}{RETIRE_AFTER} {NOW}\n{a}");
        assert!(KeySet::from_pem(&good).is_ok());
        // A key rotated in at once above a staged one: the staged key only
        // verifies.
        let above = KeySet::from_pem(&format!("{a}{ACTIVE_AFTER} {NOW}\n{b}")).unwrap();
        let kid_a = above.active.kid().to_owned();
        assert_eq!(above.signer(NOW + 1).kid(), kid_a);
        assert_eq!(above.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bad_pem() {
        let a = SigningKey::generate().to_pem().unwrap();
        let public = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &SigningKey::generate().verifying_key(),
            LineEnding::LF,
        )
        .unwrap();
        assert!(matches!(KeySet::from_pem(""), Err(KeyError::NoSigningKey)));
        assert!(matches!(
            KeySet::from_pem(&public),
            Err(KeyError::NoSigningKey)
        ));
        assert!(matches!(
            KeySet::from_pem(&format!("{a}{a}")),
            Err(KeyError::DuplicateKey(_))
        ));
        let truncated = &a[..a.len() - 10];
        let body_broken = {
            let mut lines: Vec<String> = a.lines().map(str::to_owned).collect();
            let first = if lines[1].starts_with('M') { "N" } else { "M" };
            lines[1].replace_range(..1, first);
            lines.join("\n")
        };
        let cases = [
            "hello".to_owned(),
            truncated.to_owned(),
            body_broken,
            a.replace("PRIVATE KEY", "RSA PRIVATE KEY"),
            format!("{RETIRE_AFTER} soon\n{a}"),
            format!("{RETIRE_AFTER} 5\n{a}"),
            format!("{a}{RETIRE_AFTER} 5\n"),
            format!("{a}trailing words\n"),
        ];
        for case in cases {
            assert!(
                matches!(KeySet::from_pem(&case), Err(KeyError::Invalid(_))),
                "{case}"
            );
        }
    }

    #[test]
    fn role_names() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                Value::from(role.to_string())
            );
        }
        assert!("Ops".parse::<Role>().is_err());
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        // Also the rotated-out key the file still holds.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        let (old, _) = KeySet::load_or_create(&path).unwrap();
        KeySet::rotate_file(&path).unwrap();
        let (keys, _) = KeySet::load_or_create(&path).unwrap();
        let debug = format!("{keys:?}");
        assert!(debug.contains(keys.active_kid()));
        assert!(debug.contains(old.active_kid()));
        for k in [&keys.active, &old.active] {
            let bytes = k.key.to_bytes();
            assert!(!debug.contains(&hex::encode(bytes)), "{debug}");
            assert!(!debug.contains(&format!("{bytes:?}")), "{debug}");
            assert!(
                !debug.contains(&format!("{:?}", &bytes[..8])[1..20]),
                "{debug}"
            );
        }
    }
}
