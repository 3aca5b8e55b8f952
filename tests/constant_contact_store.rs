//! The Constant Contact tables of the state DB on SQLite and PostgreSQL: the OAuth token pair
//! (`oauth_tokens`) and the daily request budget (`api_budget`).

#![allow(clippy::unwrap_used)]

mod support;

use chrono::{NaiveDate, TimeZone, Utc};
use mailbridge::config::DbUrl;
use mailbridge::store::oauth::OAuthToken;
use secrecy::{ExposeSecret, SecretString};
use support::{app, db};

async fn store(url: &str, dir: &std::path::Path) -> mailbridge::store::Store {
    app::open_store(&DbUrl::parse(url, dir).unwrap()).await
}

#[tokio::test]
async fn a_token_pair_is_stored_replaced_and_read_back_on_both_backends() {
    db::on_each_state_db(async |url| {
        let dir = tempfile::tempdir().unwrap();
        let store = store(url, dir.path()).await;
        assert!(
            store
                .oauth_token("constant_contact", "app-1")
                .await
                .unwrap()
                .is_none(),
            "{url}"
        );
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let first = OAuthToken {
            refresh_token: SecretString::from("R0"),
            access_token: None,
            expires_at: None,
            rotated_at: at,
        };
        store
            .save_oauth_token("constant_contact", "app-1", &first)
            .await
            .unwrap();
        let read = store
            .oauth_token("constant_contact", "app-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.refresh_token.expose_secret(), "R0", "{url}");
        assert!(
            read.access_token.is_none() && read.expires_at.is_none(),
            "{url}"
        );
        assert_eq!(read.rotated_at, at, "{url}");

        let rotated = OAuthToken {
            refresh_token: SecretString::from("R1"),
            access_token: Some(SecretString::from("A1")),
            expires_at: Some(at + chrono::Duration::hours(24)),
            rotated_at: at + chrono::Duration::seconds(1),
        };
        store
            .save_oauth_token("constant_contact", "app-1", &rotated)
            .await
            .unwrap();
        let read = store
            .oauth_token("constant_contact", "app-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.refresh_token.expose_secret(), "R1", "{url}");
        assert_eq!(
            read.access_token.as_ref().unwrap().expose_secret(),
            "A1",
            "{url}"
        );
        assert_eq!(read.expires_at, rotated.expires_at, "{url}");
        assert_eq!(read.rotated_at, rotated.rotated_at, "{url}");
        // Another app's account is its own row.
        assert!(
            store
                .oauth_token("constant_contact", "app-2")
                .await
                .unwrap()
                .is_none(),
            "{url}"
        );
        assert!(
            !format!("{read:?}").contains("R1"),
            "{url}: Debug shows no token"
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn the_daily_budget_is_taken_atomically_up_to_its_limit_per_day() {
    db::on_each_state_db(async |url| {
        let dir = tempfile::tempdir().unwrap();
        let store = store(url, dir.path()).await;
        let day = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        // Twenty requests race for a budget of seven: exactly seven are let through.
        let takes: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.take_api_budget("constant_contact", day, 7).await })
            })
            .collect();
        let mut taken = 0;
        for t in takes {
            if t.await.unwrap().unwrap() {
                taken += 1;
            }
        }
        assert_eq!(taken, 7, "{url}");
        assert_eq!(
            store
                .api_budget_used("constant_contact", day)
                .await
                .unwrap(),
            7,
            "{url}"
        );
        // The next day, and another provider, start from nothing.
        let next = day.succ_opt().unwrap();
        assert!(
            store
                .take_api_budget("constant_contact", next, 7)
                .await
                .unwrap(),
            "{url}"
        );
        assert_eq!(
            store
                .api_budget_used("constant_contact", next)
                .await
                .unwrap(),
            1,
            "{url}"
        );
        assert_eq!(
            store.api_budget_used("other", day).await.unwrap(),
            0,
            "{url}"
        );
        // A raised limit lets more through on the same day.
        assert!(
            store
                .take_api_budget("constant_contact", day, 8)
                .await
                .unwrap(),
            "{url}"
        );
        assert!(
            !store
                .take_api_budget("constant_contact", day, 8)
                .await
                .unwrap(),
            "{url}"
        );
        store.close().await;
    })
    .await;
}
