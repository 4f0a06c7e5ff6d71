//! Once storage is lost for good (the data directory removed or replaced under the registry),
//! every write is answered with the storage error, renewals included: a renewal of a member
//! whose registration was refused would otherwise answer 2xx for a record only memory holds.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;

use super::ApiError;
use crate::store::Store;

/// Wraps the whole router once (not each route), as a plain tower layer.
#[derive(Debug, Clone)]
pub struct RefuseWritesLayer {
    pub store: Store,
}

impl<S> tower::Layer<S> for RefuseWritesLayer {
    type Service = RefuseWrites<S>;

    fn layer(&self, inner: S) -> RefuseWrites<S> {
        RefuseWrites {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service of [`RefuseWritesLayer`].
#[derive(Debug, Clone)]
pub struct RefuseWrites<S> {
    inner: S,
    store: Store,
}

impl<S> tower::Service<Request> for RefuseWrites<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let writes = ![Method::GET, Method::HEAD, Method::OPTIONS].contains(request.method())
            && request.uri().path().starts_with("/v1/");
        if writes {
            if let Some(e) = self.store.lost() {
                return Either::Left(ready(Ok(ApiError::Storage(e).into_response())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}
