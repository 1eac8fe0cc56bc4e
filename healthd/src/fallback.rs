//! What healthd answers outside its routes: an unknown path is 404 and a
//! known path asked with another method is 405, both with the Clusters
//! API's JSON body `{"message": …}` (axum adds `Allow` to a 405).

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::Router;

use crate::auth;

/// The paths `fleet::admin::admin_router` serves on healthd's listener
/// (GET only); their 405 is healthd's too.
const ADMIN_PATHS: [&str; 4] = ["/live", "/ready", "/metrics", "/status"];

/// `router` (every healthd route) with the JSON 404 and 405.
pub fn apply(router: Router) -> Router {
    let mut router = router
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    for path in ADMIN_PATHS {
        // Merged with the admin router's GET route for the same path:
        // this one only answers the methods that route does not.
        router = router.route(path, MethodRouter::new().fallback(method_not_allowed));
    }
    router
}

async fn not_found() -> Response {
    auth::not_found()
}

async fn method_not_allowed() -> Response {
    auth::message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}
