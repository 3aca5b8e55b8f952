//! Bearer-token authentication of the admin and message APIs. The token is compared in constant
//! time (invariant 7); a server without `[server] api_token` refuses every API call.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::{ApiError, Shared};

/// An extractor that succeeds only for `Authorization: Bearer <[server] api_token>`; add it as a
/// handler argument to protect the route.
#[derive(Debug, Clone, Copy)]
pub struct ApiAuth;

/// Whether `given` equals `expected`, in time independent of where they differ.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    given.ct_eq(expected).into()
}

impl FromRequestParts<Shared> for ApiAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<ApiAuth, ApiError> {
        let Some(expected) = state.api_token() else {
            return Err(ApiError::unauthorized(
                "the API is off: [server] api_token is not configured",
            ));
        };
        let given = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match given {
            Some(token)
                if constant_time_eq(token.as_bytes(), expected.expose_secret().as_bytes()) =>
            {
                Ok(ApiAuth)
            }
            Some(_) => Err(ApiError::unauthorized("wrong bearer token")),
            None => Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <token>` header",
            )),
        }
    }
}
