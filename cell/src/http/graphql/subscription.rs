//! Subscriptions, fed by the caller's event feed: the same
//! `GET /v1/events?after=&wait=` long poll (handler and all) drives every
//! stream, so a subscription sees exactly what the feed holds, in feed
//! order, on whichever node it is connected to (followers wake waiters on
//! apply, so a leader change does not interrupt it).

use std::collections::VecDeque;

use async_graphql::{
    futures_util::{Stream, StreamExt},
    Context, Object, Result, Subscription,
};
use serde::Serialize;

use super::caller::{path, query, Caller, OrGql};
use super::model::{Delivery, Event, EventPage, Order};
use crate::http::{drivers_api, events_api, extract::Consistency, extract::Principal, orders_api};

/// Seconds each underlying long poll waits before it asks again.
const POLL_SECS: u64 = 30;

pub struct Subscription;

/// A change of an order.
pub struct OrderUpdate {
    event: Event,
    order_id: String,
}

#[Object]
impl OrderUpdate {
    /// Position in the caller's feed.
    async fn seq(&self) -> u64 {
        self.event.seq
    }
    /// order.placed, order.accepted, ..., order.delivered
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.event.kind
    }
    async fn at(&self) -> &str {
        &self.event.at
    }
    /// The status the order moved to.
    async fn status(&self) -> Option<String> {
        self.event.data.0["status"].as_str().map(str::to_string)
    }
    /// The order as it is now.
    async fn order(&self, ctx: &Context<'_>) -> Result<Order> {
        let c = Caller::of(ctx)?;
        let r = orders_api::get_order(
            c.s(),
            c.principal().gql()?,
            Consistency::Local,
            path(self.order_id.clone()),
        )
        .await;
        c.answer(r).await
    }
}

/// A change of a delivery.
pub struct DeliveryUpdate {
    event: Event,
    delivery_id: String,
}

#[Object]
impl DeliveryUpdate {
    async fn seq(&self) -> u64 {
        self.event.seq
    }
    /// delivery.assigned, delivery.arrived, delivery.picked_up, ...
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.event.kind
    }
    async fn at(&self) -> &str {
        &self.event.at
    }
    /// The delivery as it is now.
    async fn delivery(&self, ctx: &Context<'_>) -> Result<Delivery> {
        let c = Caller::of(ctx)?;
        let r = drivers_api::get_delivery(
            c.s(),
            c.principal().gql()?,
            Consistency::Local,
            path(self.delivery_id.clone()),
        )
        .await;
        c.answer(r).await
    }
}

#[derive(Serialize)]
struct FeedArgs {
    after: u64,
    wait: u64,
}

/// The caller's feed after `after` as an endless stream of events.
fn feed(caller: Caller, p: Principal, after: u64) -> impl Stream<Item = Result<Event>> {
    struct S {
        caller: Caller,
        p: Principal,
        after: u64,
        ready: VecDeque<Event>,
        failed: bool,
    }
    let state = S {
        caller,
        p,
        after,
        ready: VecDeque::new(),
        failed: false,
    };
    async_graphql::futures_util::stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        loop {
            if let Some(e) = s.ready.pop_front() {
                return Some((Ok(e), s));
            }
            let r = events_api::feed(
                s.caller.s(),
                s.p.clone(),
                Consistency::Local,
                query(FeedArgs {
                    after: s.after,
                    wait: POLL_SECS,
                }),
            )
            .await;
            match s.caller.answer::<EventPage, _>(r).await {
                Ok(page) => {
                    s.after = page.next;
                    s.ready.extend(page.events);
                }
                Err(e) => {
                    s.failed = true;
                    return Some((Err(e), s));
                }
            }
        }
    })
}

/// Where a subscription starts: after the given cursor, or at the feed's
/// current end.
fn start(c: &Caller, p: &Principal, after: Option<u64>) -> Result<u64> {
    if let Some(a) = after {
        return Ok(a);
    }
    let last = c
        .state
        .node
        .store()
        .read()
        .and_then(|read| crate::events::last_seq(&read, &p.sub));
    last.map_err(|e| super::caller::gql_error(crate::http::problem::ApiError::from(e)))
}

/// The events of `events` that `keep` selects; errors always pass (they
/// end the stream).
fn only(
    events: impl Stream<Item = Result<Event>>,
    keep: impl Fn(&Event) -> bool,
) -> impl Stream<Item = Result<Event>> {
    events.filter(move |e| {
        let pass = e.as_ref().map_or(true, &keep);
        async move { pass }
    })
}

fn data_str<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
    e.data.0.get(key).and_then(|v| v.as_str())
}

#[Subscription]
impl Subscription {
    /// Every event of the caller's feed from now on (or after `after`).
    async fn events(
        &self,
        ctx: &Context<'_>,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Event>>> {
        let c = Caller::of(ctx)?.clone();
        let p = c.principal().gql()?;
        let after = start(&c, &p, after)?;
        Ok(feed(c, p, after))
    }

    /// Status changes of one order the caller may see, in order.
    async fn order_updates(
        &self,
        ctx: &Context<'_>,
        order_id: String,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<OrderUpdate>>> {
        let c = Caller::of(ctx)?.clone();
        let p = c.principal().gql()?;
        // The same visibility as reading the order.
        let r = orders_api::get_order(c.s(), p.clone(), Consistency::Local, path(order_id.clone()))
            .await;
        c.answer::<Order, _>(r).await?;
        let after = start(&c, &p, after)?;
        let id = order_id.clone();
        let updates = only(feed(c, p, after), move |e| {
            e.kind.starts_with("order.") && data_str(e, "order_id") == Some(&id)
        });
        Ok(updates.map(move |e| {
            e.map(|event| OrderUpdate {
                event,
                order_id: order_id.clone(),
            })
        }))
    }

    /// Changes of one delivery the caller may see, in order.
    async fn delivery_updates(
        &self,
        ctx: &Context<'_>,
        delivery_id: String,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<DeliveryUpdate>>> {
        let c = Caller::of(ctx)?.clone();
        let p = c.principal().gql()?;
        let r = drivers_api::get_delivery(
            c.s(),
            p.clone(),
            Consistency::Local,
            path(delivery_id.clone()),
        )
        .await;
        let delivery = c.answer::<Delivery, _>(r).await?;
        let after = start(&c, &p, after)?;
        let order_id = delivery.order_id;
        let id = delivery_id.clone();
        // Delivery events name the delivery; the order's pickup and
        // drop-off events name the order.
        let updates = only(feed(c, p, after), move |e| {
            data_str(e, "delivery_id") == Some(&id)
                || (e.kind.starts_with("order.") && data_str(e, "order_id") == Some(&order_id))
        });
        Ok(updates.map(move |e| {
            e.map(|event| DeliveryUpdate {
                event,
                delivery_id: delivery_id.clone(),
            })
        }))
    }

    /// Offers made to the calling driver, and what became of them
    /// (offer.created, offer.expired, offer.declined, ...).
    async fn offers(
        &self,
        ctx: &Context<'_>,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Event>>> {
        let c = Caller::of(ctx)?.clone();
        let p = c.principal().gql()?;
        let after = start(&c, &p, after)?;
        Ok(only(feed(c, p, after), |e| e.kind.starts_with("offer.")))
    }
}
