//! What every GraphQL request passes through besides the resolvers: each
//! mutation pays its rate-limit allowance like the REST call it stands
//! for, so does each operation on a socket after its first, and every
//! error carries a stable `code` extension — including the ones
//! async-graphql raises itself while parsing and validating.

use std::{sync::Arc, time::Duration};

use async_graphql::{
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextRequest, NextResolve, NextSubscribe,
        ResolveInfo,
    },
    futures_util::stream::{self, BoxStream, StreamExt},
    PathSegment, Response, ServerError, ServerResult, Value,
};

use super::caller::{gql_error, token_expired, Caller};

pub struct Guard {
    /// Whether `__schema` and `__type` answer; when not they are refused
    /// with `introspection_disabled` (async-graphql alone answers `null`,
    /// which reads like an empty schema).
    pub introspection: bool,
}

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard {
            introspection: self.introspection,
        })
    }
}

#[async_trait::async_trait]
impl Extension for Guard {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        with_codes(next.run(ctx).await)
    }

    /// Every operation sent over a socket (subscriptions, and queries and
    /// mutations too, which async-graphql runs through here) after the
    /// first pays like a request of its own; the upgrade paid for one. An
    /// operation holds one of the socket's places while it runs, and ends
    /// with an `unauthorized` error when the socket's token expires: a
    /// socket must not carry a token past its lifetime.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let Ok(caller) = ctx.data::<Caller>() else {
            return next.run(ctx, stream).map(with_codes).boxed();
        };
        let now = crate::http::identity_api::now_ms() / 1000;
        let place = match caller.start_operation(now) {
            Ok(place) => place,
            Err(e) => {
                let e = with_code(gql_error(e).into_server_error(Default::default()));
                return stream::once(async move { Response::from_errors(vec![e]) }).boxed();
            }
        };
        // No expiry (the bootstrap token, or no token): tokio clamps the
        // longest sleep to a far-off deadline.
        let left = caller
            .expires_at()
            .map_or(Duration::MAX, |exp| secs_until(exp, now));
        let run = next.run(ctx, stream).map(with_codes).boxed();
        let state = Some((run, Box::pin(tokio::time::sleep(left)), place));
        stream::unfold(state, |state| async move {
            let (mut run, mut expiry, place) = state?;
            tokio::select! {
                biased;
                next = run.next() => next.map(|r| (r, Some((run, expiry, place)))),
                () = &mut expiry => Some((expired(), None)),
            }
        })
        .boxed()
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if !self.introspection && matches!(info.name, "__schema" | "__type") {
            let e = crate::http::problem::ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "introspection_disabled",
                "introspection is turned off on this cell; the schema is at /graphql/schema.graphql",
            );
            let mut e = gql_error(e).into_server_error(info.field.name.pos);
            e.path = vec![PathSegment::Field(
                info.alias.unwrap_or(info.name).to_string(),
            )];
            return Err(e);
        }
        if info.parent_type == "Mutation" {
            if let Ok(caller) = ctx.data::<Caller>() {
                caller.charge_mutation(info.name).map_err(|e| {
                    let mut e = gql_error(e).into_server_error(info.field.name.pos);
                    // A root field: its response key is the whole path.
                    e.path = vec![PathSegment::Field(
                        info.alias.unwrap_or(info.name).to_string(),
                    )];
                    e
                })?;
            }
        }
        next.run(ctx, info).await
    }
}

fn secs_until(exp: i64, now: i64) -> Duration {
    Duration::from_secs(u64::try_from(exp.saturating_sub(now)).unwrap_or(0))
}

/// The last message of an operation whose socket's token expired.
fn expired() -> Response {
    Response::from_errors(vec![with_code(
        gql_error(token_expired()).into_server_error(Default::default()),
    )])
}

fn with_codes(mut resp: Response) -> Response {
    resp.errors = resp.errors.into_iter().map(with_code).collect();
    resp
}

fn with_code(mut e: ServerError) -> ServerError {
    let x = e.extensions.get_or_insert_with(Default::default);
    if x.get("code").is_none() {
        x.set("code", library_code(&e.message));
    }
    e
}

/// The code for an error async-graphql raised before any resolver ran
/// (resolvers' errors carry their problem's code already).
fn library_code(message: &str) -> &'static str {
    if message.starts_with("Query is too complex") {
        "query_too_complex"
    } else if message.starts_with("Query is nested too deep")
        || message.starts_with("The recursion depth")
    {
        "query_too_deep"
    } else {
        "invalid_query"
    }
}

#[cfg(test)]
mod tests {
    use super::library_code;

    #[test]
    fn the_librarys_refusals_get_stable_codes() {
        assert_eq!(library_code("Query is too complex."), "query_too_complex");
        assert_eq!(library_code("Query is nested too deep."), "query_too_deep");
        assert_eq!(
            library_code("The recursion depth of the query cannot be greater than `64`"),
            "query_too_deep"
        );
        assert_eq!(library_code(" --> 1:3\n  |\n1 | {{"), "invalid_query");
    }
}
