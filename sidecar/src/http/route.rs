//! Every endpoint of the API, parsed once from the request's method and
//! path. Handlers match on this type; nothing else looks at the path.

use hyper::Method;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz` (no token).
    Health,
    /// `GET /v1/witness` (no token).
    Witness,
    /// `GET /metrics` (the operator).
    Metrics,
    /// `/v1/groups`: list, create.
    Groups,
    /// `/v1/groups/<g>`.
    Group(String),
    Head(String),
    Stats(String),
    Commits(String),
    /// `/v1/groups/<g>/snapshots`: make one now.
    Snapshots(String),
    LatestSnapshot(String),
    /// `/v1/groups/<g>/snapshots/<seq>/data`.
    SnapshotData(String, u64),
    Members(String),
    Member(String, String),
    Rules(String),
    Rule(String, String),
    Projections(String),
    Projection(String, String),
    /// `/v1/groups/<g>/migrations`: migrate (admin), list (readers).
    Migrations(String),
    /// `/v1/tokens`: make, list static tokens (the operator).
    Tokens,
    /// `/v1/tokens/<identity>`: revoke (the operator).
    Token(String),
}

impl Route {
    /// The endpoint a request is for; `None` for a path the API does not
    /// have (the public endpoints exist for GET only). Each segment is
    /// percent-decoded (after splitting, so `%2F` stays inside its
    /// segment): identities, table and projection names are taken as the
    /// client meant them (`jwt:auth0%7C123` is `jwt:auth0|123`, a table
    /// `my tasks` is `my%20tasks`). A segment that does not decode to
    /// UTF-8 is no path of the API.
    pub fn parse(method: &Method, path: &str) -> Option<Route> {
        let decoded: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|s| s.into_owned())
            })
            .collect::<Option<_>>()?;
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let s = |x: &str| x.to_string();
        Some(match segs.as_slice() {
            ["healthz"] if method == Method::GET => Route::Health,
            ["v1", "witness"] if method == Method::GET => Route::Witness,
            ["metrics"] => Route::Metrics,
            ["v1", "groups"] => Route::Groups,
            ["v1", "groups", g] => Route::Group(s(g)),
            ["v1", "groups", g, "head"] => Route::Head(s(g)),
            ["v1", "groups", g, "stats"] => Route::Stats(s(g)),
            ["v1", "groups", g, "commits"] => Route::Commits(s(g)),
            ["v1", "groups", g, "snapshots"] => Route::Snapshots(s(g)),
            ["v1", "groups", g, "snapshots", "latest"] => Route::LatestSnapshot(s(g)),
            ["v1", "groups", g, "snapshots", seq, "data"] => {
                Route::SnapshotData(s(g), seq.parse().ok()?)
            }
            ["v1", "groups", g, "members"] => Route::Members(s(g)),
            ["v1", "groups", g, "members", who] => Route::Member(s(g), s(who)),
            ["v1", "groups", g, "rules"] => Route::Rules(s(g)),
            ["v1", "groups", g, "rules", t] => Route::Rule(s(g), s(t)),
            ["v1", "groups", g, "projections"] => Route::Projections(s(g)),
            ["v1", "groups", g, "projections", n] => Route::Projection(s(g), s(n)),
            ["v1", "groups", g, "migrations"] => Route::Migrations(s(g)),
            ["v1", "tokens"] => Route::Tokens,
            ["v1", "tokens", who] => Route::Token(s(who)),
            _ => return None,
        })
    }

    /// The endpoint's name, for metrics (never a group id).
    pub fn name(&self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::Witness => "witness",
            Route::Metrics => "metrics",
            Route::Groups => "groups",
            Route::Group(_) => "group",
            Route::Head(_) => "head",
            Route::Stats(_) => "stats",
            Route::Commits(_) => "commits",
            Route::Snapshots(_) => "snapshots",
            Route::LatestSnapshot(_) => "latest_snapshot",
            Route::SnapshotData(..) => "snapshot_data",
            Route::Members(_) => "members",
            Route::Member(..) => "member",
            Route::Rules(_) => "rules",
            Route::Rule(..) => "rule",
            Route::Projections(_) => "projections",
            Route::Projection(..) => "projection",
            Route::Migrations(_) => "migrations",
            Route::Tokens => "tokens",
            Route::Token(_) => "token",
        }
    }

    /// Whether the endpoint answers without a token.
    pub fn is_public(&self) -> bool {
        matches!(self, Route::Health | Route::Witness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_to_their_endpoint() {
        let get = Method::GET;
        assert_eq!(Route::parse(&get, "/healthz"), Some(Route::Health));
        assert_eq!(Route::parse(&Method::POST, "/healthz"), None);
        assert_eq!(
            Route::parse(&get, "/v1/groups/g/snapshots/12/data"),
            Some(Route::SnapshotData("g".into(), 12))
        );
        assert_eq!(Route::parse(&get, "/v1/groups/g/snapshots/x/data"), None);
        assert_eq!(
            Route::parse(&Method::PUT, "/v1/groups/g/members/alice"),
            Some(Route::Member("g".into(), "alice".into()))
        );
        assert_eq!(Route::parse(&get, "/v1/groups/g/nope"), None);
        // Segments are percent-decoded, each on its own.
        assert_eq!(
            Route::parse(&Method::PUT, "/v1/groups/g/members/jwt:auth0%7C12%2F3"),
            Some(Route::Member("g".into(), "jwt:auth0|12/3".into()))
        );
        assert_eq!(
            Route::parse(&Method::PUT, "/v1/groups/g/rules/my%20tasks"),
            Some(Route::Rule("g".into(), "my tasks".into()))
        );
        assert_eq!(
            Route::parse(&Method::POST, "/v1/groups/g%2Dx/migration%73"),
            Some(Route::Migrations("g-x".into()))
        );
        assert_eq!(Route::parse(&get, "/v1/groups/g/members/%FF"), None);
        assert_eq!(
            Route::parse(&Method::POST, "/v1/tokens"),
            Some(Route::Tokens)
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/v1/tokens/phone-1"),
            Some(Route::Token("phone-1".into()))
        );
        assert_eq!(Route::parse(&get, "/v1/groups/g/head/extra"), None);
    }
}
