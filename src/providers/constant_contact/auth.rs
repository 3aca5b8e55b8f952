//! OAuth tokens: the pair in the state DB (`oauth_tokens`, account = the client id), kept fresh
//! for the client, and the two ways `mailbridge auth constant-contact` puts one there
//! ([`store_refresh_token`], [`device_flow`]).
//!
//! The rules (each is a test in `tests.rs`):
//! - a rotated refresh token is committed to the store before the new access token is used (a
//!   rotating token works once: losing it locks the account out until someone re-authorizes);
//! - a refresh happens only when the access token has under [`REFRESH_MARGIN`] left, or after a
//!   401 (then the call is retried once);
//! - refreshes of one client and its clones are serialised (one in flight, the others wait for
//!   its result), and no more than one token call a second goes out per process;
//! - a refresh refused with `invalid_grant` means another process used the token first: the
//!   store is read again, and a newer pair stored there is adopted; only when none appears is the
//!   connection broken;
//! - tokens never appear in logs, errors or `Debug` ([`SecretString`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::RETRY_AFTER;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::error::{ApiProblem, ConstantContactError, ErrorKind, bounded};
use super::limits::{Pacer, token_pacer};
use super::types::DeviceCode;
use super::wire;
use super::{ConstantContactClient, transport_error};
use crate::config::ConstantContactConfig;
use crate::providers::retry::{Sleeper, parse_retry_after};
use crate::store::Store;
use crate::store::oauth::OAuthToken;

/// The provider name tokens are stored under.
pub(super) const TOKEN_PROVIDER: &str = "constant_contact";
/// An access token with less than this left is refreshed before use.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The scopes `mailbridge auth constant-contact` asks for: contacts, campaigns, the account's
/// verified senders, and a refresh token.
pub const SCOPES: &str = "contact_data campaign_data account_read offline_access";
/// How long a refresh refused with `invalid_grant` looks for the pair another process is storing.
const ADOPT_WINDOW: Duration = Duration::from_secs(3);
/// `expires_in` above this is an epoch time, not a number of seconds.
const EPOCH_THRESHOLD: i64 = 1_000_000_000;

/// The OAuth app and its token endpoint.
#[derive(Clone)]
pub(super) struct AuthConfig {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub token_url: Url,
    pub device_url: Url,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("token_url", &self.token_url.as_str())
            .finish()
    }
}

impl AuthConfig {
    pub(super) fn new(config: &ConstantContactConfig) -> Result<AuthConfig, ErrorKind> {
        let url = |what: &str, raw: String| {
            Url::parse(&raw).map_err(|e| ErrorKind::Setup {
                detail: format!("the {what} `{raw}` is not a URL: {e}"),
            })
        };
        Ok(AuthConfig {
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            token_url: url("token URL", config.token_url())?,
            device_url: url("device authorization URL", config.device_url())?,
        })
    }
}

/// Why a token call failed.
enum TokenError {
    /// The endpoint answered with an OAuth error (`invalid_grant`, `authorization_pending`, …).
    OAuth { error: String, detail: String },
    /// Transport, server error or an unreadable answer.
    Other(ErrorKind),
}

impl TokenError {
    fn into_kind(self) -> ErrorKind {
        match self {
            TokenError::OAuth { detail, .. } => ErrorKind::TokenRefused { detail },
            TokenError::Other(kind) => kind,
        }
    }
}

/// Posts `form` to `url` with the app's credentials: Basic auth when a secret is configured,
/// else `client_id` in the body (never both: the server refuses two sets of credentials).
async fn post_form<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    auth: &AuthConfig,
    url: &Url,
    mut form: Vec<(&str, &str)>,
    pacer: Option<&Pacer>,
) -> Result<T, TokenError> {
    let mut request = http.post(url.clone());
    match &auth.client_secret {
        Some(secret) => {
            request = request.basic_auth(&auth.client_id, Some(secret.expose_secret()));
        }
        None => form.push(("client_id", &auth.client_id)),
    }
    if let Some(pacer) = pacer {
        pacer.wait().await;
    }
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| TokenError::Other(transport_error(&e)))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let body = response
        .bytes()
        .await
        .map_err(|e| TokenError::Other(transport_error(&e)))?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            TokenError::Other(ErrorKind::MalformedResponse {
                detail: format!("token endpoint: {e}"),
            })
        });
    }
    let problem = ApiProblem::decode(&body);
    let code = status.as_u16();
    match (code, problem.key) {
        (429, _) => Err(TokenError::Other(ErrorKind::Throttled {
            retry_after,
            detail: problem.detail,
        })),
        (500..=599, _) => Err(TokenError::Other(ErrorKind::Server {
            status: code,
            detail: problem.detail,
            retry_after,
        })),
        (_, Some(error)) => Err(TokenError::OAuth {
            error,
            detail: problem.detail,
        }),
        (_, None) => Err(TokenError::OAuth {
            error: String::new(),
            detail: bounded(&format!("{status}")),
        }),
    }
}

/// When an access token expires: `expires_in` is seconds from `now`, or an epoch time when it is
/// that large (the spec describes it so; the server sends seconds).
pub(super) fn expires_at(expires_in: Option<i64>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let n = expires_in?;
    if n > EPOCH_THRESHOLD {
        DateTime::from_timestamp(n, 0)
    } else {
        now.checked_add_signed(chrono::Duration::seconds(n.max(0)))
    }
}

/// A new pair from a token answer; a missing refresh token means the old one stays valid.
fn pair_from(
    answer: wire::TokenResponse,
    old_refresh: &SecretString,
    now: DateTime<Utc>,
) -> OAuthToken {
    OAuthToken {
        refresh_token: answer
            .refresh_token
            .filter(|r| !r.is_empty())
            .map(SecretString::from)
            .unwrap_or_else(|| old_refresh.clone()),
        access_token: Some(SecretString::from(answer.access_token)),
        expires_at: expires_at(answer.expires_in, now),
        rotated_at: now,
    }
}

/// Whether `token`'s access token has at least [`REFRESH_MARGIN`] left at `now` (a token without
/// a known expiry is used until a 401 says otherwise).
pub(super) fn is_fresh(token: &OAuthToken, now: DateTime<Utc>) -> bool {
    token.access_token.is_some()
        && token.expires_at.is_none_or(|at| {
            at - now >= chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or(chrono::Duration::MAX)
        })
}

/// Whether `stored` is a later pair than `known` (another process refreshed).
fn is_newer(stored: &OAuthToken, known: &OAuthToken) -> bool {
    stored.rotated_at > known.rotated_at
        || stored.refresh_token.expose_secret() != known.refresh_token.expose_secret()
}

fn store_err(e: crate::store::StoreError) -> ErrorKind {
    ErrorKind::Store {
        detail: crate::error_chain(&e),
    }
}

/// The access token of one client and its clones.
pub(super) struct Tokens {
    http: reqwest::Client,
    auth: AuthConfig,
    store: Store,
    pacer: Arc<Pacer>,
    /// The pair in use. Its lock is also what serialises refreshes.
    current: tokio::sync::Mutex<Option<OAuthToken>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").field("auth", &self.auth).finish()
    }
}

impl Tokens {
    pub(super) fn new(http: reqwest::Client, auth: AuthConfig, store: Store) -> Tokens {
        Tokens {
            pacer: token_pacer(auth.token_url.as_str()),
            http,
            auth,
            store,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// An access token with at least [`REFRESH_MARGIN`] left, refreshed first if needed.
    pub(super) async fn access(&self) -> Result<SecretString, ErrorKind> {
        let mut current = self.current.lock().await;
        if current.is_none() {
            *current = self.load().await?;
        }
        if let Some(token) = current.as_ref()
            && is_fresh(token, self.store.now())
            && let Some(access) = &token.access_token
        {
            return Ok(access.clone());
        }
        self.refresh(&mut current, None).await
    }

    /// A new access token after `used` was answered 401: a refresh, unless another task already
    /// replaced `used`.
    pub(super) async fn after_unauthorized(
        &self,
        used: &SecretString,
    ) -> Result<SecretString, ErrorKind> {
        let mut current = self.current.lock().await;
        if let Some(access) = current.as_ref().and_then(|t| t.access_token.as_ref())
            && access.expose_secret() != used.expose_secret()
        {
            return Ok(access.clone());
        }
        self.refresh(&mut current, Some(used)).await
    }

    async fn load(&self) -> Result<Option<OAuthToken>, ErrorKind> {
        match self
            .store
            .oauth_token(TOKEN_PROVIDER, &self.auth.client_id)
            .await
            .map_err(store_err)?
        {
            Some(token) => Ok(Some(token)),
            None => Err(ErrorKind::NotConnected),
        }
    }

    /// Refreshes (the lock held): adopts a fresh pair another process stored since, else spends
    /// the stored refresh token and commits the rotated pair before handing out its access token.
    /// `refused` is an access token the API answered 401, never adopted again.
    async fn refresh(
        &self,
        current: &mut Option<OAuthToken>,
        refused: Option<&SecretString>,
    ) -> Result<SecretString, ErrorKind> {
        // Two rounds at most: a refresh refused because another process rotated first, then one
        // with the pair it stored (when that one's access token is no longer fresh).
        for _ in 0..2 {
            self.pacer.wait().await;
            let stored = self.load().await?.ok_or(ErrorKind::NotConnected)?;
            let known = current.clone();
            let now = self.store.now();
            if let Some(known) = &known
                && is_newer(&stored, known)
                && is_fresh(&stored, now)
                && let Some(access) = stored.access_token.clone()
                && refused.is_none_or(|r| r.expose_secret() != access.expose_secret())
            {
                *current = Some(stored);
                return Ok(access);
            }
            let answer = post_form::<wire::TokenResponse>(
                &self.http,
                &self.auth,
                &self.auth.token_url,
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", stored.refresh_token.expose_secret()),
                ],
                None,
            )
            .await;
            match answer {
                Ok(answer) => {
                    let pair = pair_from(answer, &stored.refresh_token, self.store.now());
                    self.store
                        .save_oauth_token(TOKEN_PROVIDER, &self.auth.client_id, &pair)
                        .await
                        .map_err(store_err)?;
                    let access = pair.access_token.clone().ok_or(ErrorKind::NotConnected)?;
                    tracing::info!("Refreshed the Constant Contact access token");
                    *current = Some(pair);
                    return Ok(access);
                }
                Err(TokenError::OAuth { error, detail }) if error == "invalid_grant" => {
                    match self.newer_than(&stored).await? {
                        Some(newer) => {
                            tracing::info!(
                                "Another process refreshed the Constant Contact token first; using its pair"
                            );
                            let access = newer.access_token.clone();
                            *current = Some(newer.clone());
                            if let Some(access) = access
                                && is_fresh(&newer, self.store.now())
                            {
                                return Ok(access);
                            }
                        }
                        None => {
                            return Err(ErrorKind::ConnectionBroken {
                                detail: format!("the refresh token was refused: {detail}"),
                            });
                        }
                    }
                }
                Err(e) => return Err(e.into_kind()),
            }
        }
        Err(ErrorKind::ConnectionBroken {
            detail: "the refresh token another process stored was refused too".to_owned(),
        })
    }

    /// Waits up to [`ADOPT_WINDOW`] for the store to hold a pair newer than `used` (the process
    /// that won the race may still be committing it).
    async fn newer_than(&self, used: &OAuthToken) -> Result<Option<OAuthToken>, ErrorKind> {
        let deadline = tokio::time::Instant::now() + ADOPT_WINDOW;
        loop {
            if let Some(stored) = self.load().await?
                && is_newer(&stored, used)
            {
                return Ok(Some(stored));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn http_client(config: &ConstantContactConfig) -> Result<reqwest::Client, ErrorKind> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .user_agent(concat!("mailbridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ErrorKind::Setup {
            detail: format!("cannot build the HTTP client: {e}"),
        })
}

/// `mailbridge auth constant-contact --refresh-token -`: spends `refresh` once, stores the pair
/// it rotates to, and proves the connection with an authenticated call.
pub async fn store_refresh_token(
    config: &ConstantContactConfig,
    store: &Store,
    refresh: SecretString,
) -> Result<(), ConstantContactError> {
    const OP: &str = "token";
    let err = |kind| ConstantContactError::new(OP, kind);
    let auth = AuthConfig::new(config).map_err(err)?;
    let http = http_client(config).map_err(err)?;
    let answer = post_form::<wire::TokenResponse>(
        &http,
        &auth,
        &auth.token_url,
        vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.expose_secret()),
        ],
        Some(&token_pacer(auth.token_url.as_str())),
    )
    .await
    .map_err(|e| match e {
        TokenError::OAuth { error, detail } if error == "invalid_grant" => {
            err(ErrorKind::ConnectionBroken {
                detail: format!("the refresh token given was refused: {detail}"),
            })
        }
        other => err(other.into_kind()),
    })?;
    let pair = pair_from(answer, &refresh, store.now());
    store
        .save_oauth_token(TOKEN_PROVIDER, &auth.client_id, &pair)
        .await
        .map_err(|e| err(store_err(e)))?;
    prove(config, store).await
}

/// The device flow: asks for a code, shows it with `show`, and polls the token endpoint at the
/// interval the server asks for until the person approves (or denies, or the code expires);
/// then stores the pair and proves the connection.
pub async fn device_flow(
    config: &ConstantContactConfig,
    store: &Store,
    show: impl FnMut(&DeviceCode),
) -> Result<(), ConstantContactError> {
    device_flow_with(config, store, show, &Sleeper::tokio()).await
}

/// [`device_flow`] waiting between polls with `sleeper`.
pub(super) async fn device_flow_with(
    config: &ConstantContactConfig,
    store: &Store,
    mut show: impl FnMut(&DeviceCode),
    sleeper: &Sleeper,
) -> Result<(), ConstantContactError> {
    let err = |op: &'static str| move |kind| ConstantContactError::new(op, kind);
    let auth = AuthConfig::new(config).map_err(err("device_authorize"))?;
    let http = http_client(config).map_err(err("device_authorize"))?;
    let pacer = token_pacer(auth.token_url.as_str());
    let code: wire::DeviceAuthorizeResponse = post_form(
        &http,
        &auth,
        &auth.device_url,
        vec![("scope", SCOPES)],
        None,
    )
    .await
    .map_err(|e| err("device_authorize")(e.into_kind()))?;
    let expires_in = Duration::from_secs(code.expires_in.unwrap_or(600));
    show(&DeviceCode {
        user_code: code.user_code,
        verification_uri: code.verification_uri,
        verification_uri_complete: code.verification_uri_complete,
        expires_in,
    });
    let mut interval = Duration::from_secs(code.interval.unwrap_or(5));
    let mut waited = Duration::ZERO;
    let answer = loop {
        sleeper.sleep(interval).await;
        waited += interval;
        let polled = post_form::<wire::TokenResponse>(
            &http,
            &auth,
            &auth.token_url,
            vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &code.device_code),
            ],
            Some(&pacer),
        )
        .await;
        let refused = |detail: String| err("token")(ErrorKind::TokenRefused { detail });
        match polled {
            Ok(answer) => break answer,
            Err(TokenError::OAuth { error, detail }) => match error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += Duration::from_secs(5),
                "expired_token" => {
                    return Err(refused(format!(
                        "the code expired before it was approved: run `{}` again",
                        super::error::AUTH_COMMAND
                    )));
                }
                "access_denied" => {
                    return Err(refused(
                        "the request was denied at Constant Contact".to_owned(),
                    ));
                }
                _ => return Err(refused(detail)),
            },
            Err(TokenError::Other(kind)) => return Err(err("token")(kind)),
        }
        if waited >= expires_in {
            return Err(refused(format!(
                "the code expired before it was approved: run `{}` again",
                super::error::AUTH_COMMAND
            )));
        }
    };
    let Some(refresh) = answer.refresh_token.clone().filter(|r| !r.is_empty()) else {
        return Err(err("token")(ErrorKind::TokenRefused {
            detail: "no refresh token came back: the app must allow refresh tokens and the \
                     offline_access scope"
                .to_owned(),
        }));
    };
    let pair = pair_from(answer, &SecretString::from(refresh), store.now());
    store
        .save_oauth_token(TOKEN_PROVIDER, &auth.client_id, &pair)
        .await
        .map_err(|e| err("token")(store_err(e)))?;
    prove(config, store).await
}

/// One authenticated call with the stored pair.
async fn prove(config: &ConstantContactConfig, store: &Store) -> Result<(), ConstantContactError> {
    ConstantContactClient::new(config, store.clone())?
        .account_summary()
        .await
}
