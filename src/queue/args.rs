//! Typed job arguments: a kind and its arguments as one Rust type, as
//! River's `JobArgs` and awa's are. The type names its kind; its value,
//! serialised to a JSON object, is the job's arguments, which the kind's
//! handler is given as its payload.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fork_safe::queue::{self, Enqueue, JobArgs, Schema};
//!
//! #[derive(serde::Serialize)]
//! struct SendEmail {
//!     to: String,
//! }
//!
//! impl JobArgs for SendEmail {
//!     const KIND: &'static str = "send_email";
//! }
//!
//! let mut client = postgres::Client::connect("host=/run/postgresql", postgres::NoTls)?;
//! let mail = SendEmail { to: "a@b.c".into() };
//! let job = queue::enqueue_args(&mut client, &Schema::default(), &Enqueue::default(), &mail)?;
//! println!("queued job {}", job.id);
//! # Ok(())
//! # }
//! ```

use std::fmt;

use super::{Enqueue, Enqueued, Schema, check_kind_name};

/// A kind of job, its arguments the type's value.
pub trait JobArgs: serde::Serialize {
    /// The kind's name (1 to 100 letters, digits, `_ - . :`).
    const KIND: &'static str;
}

/// Why [`enqueue_args`] queued nothing.
#[derive(Debug)]
pub enum ArgsError {
    /// The server's error.
    Db(postgres::Error),
    /// The kind's name is not one (see [`check_kind_name`]).
    Kind(super::NameError),
    /// The arguments did not serialise to a JSON object.
    NotAnObject(String),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::Db(e) => write!(f, "{e}"),
            ArgsError::Kind(e) => write!(f, "{e}"),
            ArgsError::NotAnObject(why) => write!(f, "the job's arguments: {why}"),
        }
    }
}

impl std::error::Error for ArgsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArgsError::Db(e) => Some(e),
            ArgsError::Kind(e) => Some(e),
            ArgsError::NotAnObject(_) => None,
        }
    }
}

impl From<postgres::Error> for ArgsError {
    fn from(e: postgres::Error) -> ArgsError {
        ArgsError::Db(e)
    }
}

/// Queues one job of kind `A::KIND` with `args` as its arguments, as
/// [`enqueue_one`](super::enqueue_one) does (on `client` as is, inside its
/// transaction if it is one); `how`'s kind is replaced by the type's.
///
/// # Errors
///
/// [`ArgsError::Kind`] or [`ArgsError::NotAnObject`] before anything is
/// sent; [`ArgsError::Db`] from the server. Nothing was queued.
pub fn enqueue_args<A: JobArgs>(
    client: &mut impl postgres::GenericClient,
    schema: &Schema,
    how: &Enqueue<'_>,
    args: &A,
) -> Result<Enqueued, ArgsError> {
    check_kind_name(A::KIND).map_err(ArgsError::Kind)?;
    let json = serde_json::to_value(args).map_err(|e| ArgsError::NotAnObject(e.to_string()))?;
    if !json.is_object() {
        return Err(ArgsError::NotAnObject(format!(
            "{} serialises to {json}, not to a JSON object",
            std::any::type_name::<A>()
        )));
    }
    let how = Enqueue {
        kind: A::KIND,
        arguments: true,
        ..how.clone()
    };
    Ok(super::enqueue_one(client, schema, &how, &json.to_string())?)
}

#[cfg(all(test, feature = "cluster"))]
mod tests {
    use super::*;
    use crate::cluster::TempCluster;

    #[derive(serde::Serialize)]
    struct SendEmail {
        to: String,
    }

    impl JobArgs for SendEmail {
        const KIND: &'static str = "send_email";
    }

    #[derive(serde::Serialize)]
    struct Bare(u32);

    impl JobArgs for Bare {
        const KIND: &'static str = "bare";
    }

    #[test]
    fn a_typed_job_is_queued_with_its_kind_and_arguments() {
        let cluster = TempCluster::start().unwrap();
        let mut client =
            postgres::Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let schema = Schema::new("typed").unwrap();
        super::super::migrate(&mut client, &schema).unwrap();
        let how = Enqueue::default();
        let mail = SendEmail { to: "a@b.c".into() };
        let job = enqueue_args(&mut client, &schema, &how, &mail).unwrap();
        let row = client
            .query_one(
                "SELECT kind, args->>'to', payload FROM typed.jobs_live WHERE id = $1",
                &[&job.id],
            )
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "send_email");
        assert_eq!(row.get::<_, &str>(1), "a@b.c");
        assert_eq!(row.get::<_, &str>(2), "");
        let bare = enqueue_args(&mut client, &schema, &how, &Bare(3));
        assert!(
            matches!(&bare, Err(ArgsError::NotAnObject(why)) if why.contains("not to a JSON object")),
            "{bare:?}"
        );
    }
}
