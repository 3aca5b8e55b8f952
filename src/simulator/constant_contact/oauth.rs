//! Constant Contact's authorization server under `/oauth2/default/v1` (research §1): the token
//! endpoint (refresh and device-code grants) and device authorization, plus the bearer check the
//! `/v3` routes use.
//!
//! Client authentication: `Authorization: Basic base64(client_id:client_secret)` for a confidential
//! app, or `client_id` alone in the form for the device flow (a public client). A grant made by the
//! device flow may be refreshed with `client_id` alone; one made by `connect` needs the secret.
//!
//! Refresh tokens rotate: every refresh issues a new one and the grant forgets the old, so reusing
//! any earlier token is `invalid_grant`, the race real clients hit. Access tokens stay valid until
//! they expire on the simulated clock, refresh or not. A refresh token is issued only when the
//! scope includes `offline_access`.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};

use super::state::{AccessToken, App, CcWorld, DeviceCode, Grant, TokenHash, random_secret};
use crate::simulator::SimState;

/// The device-code grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How long a device code may be polled for, in seconds (Okta's default).
pub const DEVICE_CODE_TTL_SECS: i64 = 600;

/// Where a person approves a device code (the vendor's Okta activation page).
const VERIFICATION_URI: &str = "https://authz.constantcontact.com/activate";

/// The scope `connect` grants: what the bridge asks for (research §1).
pub const CONNECT_SCOPE: &str = "contact_data campaign_data account_read offline_access";

pub fn routes() -> Router<SimState> {
    Router::new()
        .route("/token", post(token))
        .route("/device/authorize", post(device_authorize))
}

/// `{"error", "error_description"}` with `status`.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn invalid_client() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Client authentication failed.",
    )
}

fn invalid_grant() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "unknown, invalid, or expired refresh token",
    )
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The app a live access token belongs to; an expired one is forgotten.
pub fn app_of_access_token(cc: &mut CcWorld, token: &str, now: i64) -> Option<String> {
    let hash = TokenHash::of(token);
    let access = cc.access_tokens.get(&hash)?;
    if access.expires_at <= now {
        cc.access_tokens.remove(&hash);
        return None;
    }
    Some(access.client_id.clone())
}

/// What `POST /_sim/constant-contact/connect` hands out.
pub struct Connection {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

/// A new confidential app and the account's grant to it, with its first refresh token.
pub fn connect(cc: &mut CcWorld) -> Connection {
    let client_id = super::state::uuid_v4();
    let client_secret = random_secret();
    cc.apps.insert(
        client_id.clone(),
        App {
            client_id: client_id.clone(),
            secret: TokenHash::of(&client_secret),
        },
    );
    cc.grants.push(Grant {
        client_id: client_id.clone(),
        scope: CONNECT_SCOPE.to_owned(),
        public: false,
    });
    let refresh_token = random_secret();
    cc.refresh_tokens
        .insert(TokenHash::of(&refresh_token), cc.grants.len() - 1);
    Connection {
        client_id,
        client_secret,
        refresh_token,
    }
}

/// Approves the pending device code with `user_code`; `false` if there is none (or it expired).
pub fn approve(cc: &mut CcWorld, user_code: &str, now: i64) -> bool {
    let wanted = user_code.trim().to_uppercase();
    match cc
        .device_codes
        .values_mut()
        .find(|d| d.user_code == wanted && d.expires_at > now)
    {
        Some(device) => {
            device.approved = true;
            true
        }
        None => false,
    }
}

/// Issues an access token (and, with `offline_access`, a new refresh token that replaces every
/// earlier one of the grant) as the token endpoint's 200 body.
fn issue(cc: &mut CcWorld, grant: usize, now: i64, ttl_secs: u64) -> Value {
    let Some(Grant {
        client_id, scope, ..
    }) = cc.grants.get(grant).cloned()
    else {
        return json!({});
    };
    let access_token = random_secret();
    cc.access_tokens.insert(
        TokenHash::of(&access_token),
        AccessToken {
            client_id,
            expires_at: now.saturating_add((ttl_secs as i64).saturating_mul(1_000_000)),
        },
    );
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": ttl_secs,
        "scope": scope,
    });
    if scope.split_whitespace().any(|s| s == "offline_access") {
        cc.refresh_tokens.retain(|_, g| *g != grant);
        let refresh_token = random_secret();
        cc.refresh_tokens
            .insert(TokenHash::of(&refresh_token), grant);
        body["refresh_token"] = json!(refresh_token);
    }
    body
}

/// Who is calling the token endpoint.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    Confidential(String),
    Public(String),
}

impl Caller {
    fn client_id(&self) -> &str {
        match self {
            Caller::Confidential(id) | Caller::Public(id) => id,
        }
    }
}

/// Authenticates the client: Basic credentials, or `client_id` (+ optional `client_secret`) in
/// the form. `None` is `invalid_client`.
fn authenticate(
    cc: &CcWorld,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<Caller> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (client_id, secret) = match basic {
        Some(value) => {
            let (scheme, encoded) = value.trim().split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (id, secret) = text.split_once(':')?;
            if form.get("client_id").is_some_and(|body_id| body_id != id) {
                return None;
            }
            (id.to_owned(), Some(secret.to_owned()))
        }
        None => (
            form.get("client_id")?.clone(),
            form.get("client_secret").cloned(),
        ),
    };
    let app = cc.apps.get(&client_id)?;
    match secret {
        Some(secret) if TokenHash::of(&secret) == app.secret => {
            Some(Caller::Confidential(client_id))
        }
        Some(_) => None,
        None => Some(Caller::Public(client_id)),
    }
}

/// `POST /token` (form-encoded).
async fn token(State(state): State<SimState>, headers: HeaderMap, body: Bytes) -> Response {
    state.stats().constant_contact.token_calls += 1;
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The body must be form-encoded.",
        );
    };
    let form: HashMap<String, String> = form.into_iter().collect();
    let ttl = state.config().cc_access_token_ttl.as_secs();
    let interval = state.config().cc_device_interval.as_secs() as i64;
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let Some(caller) = authenticate(cc, &headers, &form) else {
        return invalid_client();
    };
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => refresh(cc, &caller, &form, now, ttl),
        Some(DEVICE_GRANT) => poll_device(cc, &caller, &form, now, ttl, interval),
        Some(_) => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The grant type is not supported by the simulator.",
        ),
        None => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required.",
        ),
    }
}

fn refresh(
    cc: &mut CcWorld,
    caller: &Caller,
    form: &HashMap<String, String>,
    now: i64,
    ttl: u64,
) -> Response {
    let Some(grant) = form
        .get("refresh_token")
        .and_then(|t| cc.refresh_tokens.get(&TokenHash::of(t)).copied())
    else {
        return invalid_grant();
    };
    let Some(owner) = cc.grants.get(grant) else {
        return invalid_grant();
    };
    if owner.client_id != caller.client_id() {
        return invalid_grant();
    }
    if !owner.public && matches!(caller, Caller::Public(_)) {
        return invalid_client();
    }
    axum::Json(issue(cc, grant, now, ttl)).into_response()
}

fn poll_device(
    cc: &mut CcWorld,
    caller: &Caller,
    form: &HashMap<String, String>,
    now: i64,
    ttl: u64,
    interval_secs: i64,
) -> Response {
    let Some(hash) = form.get("device_code").map(|c| TokenHash::of(c)) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "device_code is required.",
        );
    };
    let Some(device) = cc.device_codes.get_mut(&hash) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The device code is invalid or was already used.",
        );
    };
    if device.client_id != caller.client_id() {
        return invalid_client();
    }
    if device.expires_at <= now {
        cc.device_codes.remove(&hash);
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "expired_token",
            "The device code has expired.",
        );
    }
    let too_soon = device
        .last_poll
        .is_some_and(|last| now - last < interval_secs * 1_000_000);
    device.last_poll = Some(now);
    if too_soon {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "slow_down",
            "Polling faster than the interval.",
        );
    }
    if !device.approved {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            "The user has not yet approved the device.",
        );
    }
    let Some(device) = cc.device_codes.remove(&hash) else {
        return invalid_grant();
    };
    cc.grants.push(Grant {
        client_id: device.client_id,
        scope: device.scope,
        public: true,
    });
    let grant = cc.grants.len() - 1;
    axum::Json(issue(cc, grant, now, ttl)).into_response()
}

/// `POST /device/authorize` (form `client_id`, `scope`).
async fn device_authorize(State(state): State<SimState>, body: Bytes) -> Response {
    let form: HashMap<String, String> =
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
            .map(|pairs| pairs.into_iter().collect())
            .unwrap_or_default();
    let interval = state.config().cc_device_interval.as_secs();
    let mut world = state.world();
    let now = world.clock.now();
    let cc = &mut world.cc;
    let Some(client_id) = form.get("client_id").filter(|id| cc.apps.contains_key(*id)) else {
        return invalid_client();
    };
    let scope = form
        .get("scope")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let device_code = random_secret();
    let user_code = user_code();
    cc.device_codes.insert(
        TokenHash::of(&device_code),
        DeviceCode {
            client_id: client_id.clone(),
            user_code: user_code.clone(),
            scope,
            expires_at: now + DEVICE_CODE_TTL_SECS * 1_000_000,
            last_poll: None,
            approved: false,
        },
    );
    axum::Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": VERIFICATION_URI,
        "verification_uri_complete": format!("{VERIFICATION_URI}?user_code={user_code}"),
        "expires_in": DEVICE_CODE_TTL_SECS,
        "interval": interval,
    }))
    .into_response()
}

/// Eight letters as `ABCD-EFGH` (no vowels, so no words; no look-alike letters).
fn user_code() -> String {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut out = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            out.push('-');
        }
        let index = rand::random_range(0..LETTERS.len());
        out.push(char::from(LETTERS[index]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refresh_form(token: &str) -> HashMap<String, String> {
        [("grant_type", "refresh_token"), ("refresh_token", token)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn body(response: Response) -> (StatusCode, Value) {
        let status = response.status();
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn refresh_tokens_rotate_and_the_old_one_is_refused() {
        let mut cc = CcWorld::default();
        let conn = connect(&mut cc);
        let caller = Caller::Confidential(conn.client_id.clone());
        let (status, first) = body(refresh(
            &mut cc,
            &caller,
            &refresh_form(&conn.refresh_token),
            0,
            60,
        ));
        assert_eq!(status, StatusCode::OK);
        let rotated = first["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(rotated, conn.refresh_token);
        let (status, error) = body(refresh(
            &mut cc,
            &caller,
            &refresh_form(&conn.refresh_token),
            0,
            60,
        ));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error["error"], "invalid_grant");
        let (status, _) = body(refresh(&mut cc, &caller, &refresh_form(&rotated), 0, 60));
        assert_eq!(status, StatusCode::OK);
        // The token just used is spent as well.
        let (_, again) = body(refresh(&mut cc, &caller, &refresh_form(&rotated), 0, 60));
        assert_eq!(again["error"], "invalid_grant");
    }

    #[test]
    fn a_confidential_grant_needs_the_secret() {
        let mut cc = CcWorld::default();
        let conn = connect(&mut cc);
        let public = Caller::Public(conn.client_id.clone());
        let (status, error) = body(refresh(
            &mut cc,
            &public,
            &refresh_form(&conn.refresh_token),
            0,
            60,
        ));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error["error"], "invalid_client");
    }

    #[test]
    fn access_tokens_expire_on_the_simulated_clock() {
        let mut cc = CcWorld::default();
        let conn = connect(&mut cc);
        let issued = issue(&mut cc, 0, 1_000_000, 60);
        let token = issued["access_token"].as_str().unwrap();
        assert_eq!(
            app_of_access_token(&mut cc, token, 60_999_999).as_deref(),
            Some(conn.client_id.as_str())
        );
        assert_eq!(app_of_access_token(&mut cc, token, 61_000_000), None);
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn user_codes_have_the_dashed_shape() {
        let code = user_code();
        assert_eq!(code.len(), 9);
        assert_eq!(code.as_bytes()[4], b'-');
    }
}
