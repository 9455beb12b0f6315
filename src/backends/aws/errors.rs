//! What EC2's error codes mean for the caller: the backend error taxonomy.

use super::client::CallError;
use crate::backends::BackendError;

/// What an EC2 error means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NotFound,
    Capacity,
    Throttled,
    Config,
    /// The server failed: whether the call took effect is unknown.
    Unanswered,
    Other,
}

/// Classifies an EC2 error code (HTTP `status` decides only when the code is unknown).
fn classify(status: u16, code: &str) -> Kind {
    let family = code.split('.').next().unwrap_or_default();
    match code {
        "InvalidInstanceID.NotFound" => Kind::NotFound,
        "SpotMaxPriceTooLow"
        | "MaxSpotInstanceCountExceeded"
        | "Unsupported"
        | "InstanceLimitExceeded"
        | "VcpuLimitExceeded" => Kind::Capacity,
        c if c.starts_with("Insufficient") => Kind::Capacity,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" => Kind::Throttled,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "OptInRequired"
        | "Blocked"
        | "ExpiredToken"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "InvalidParameter"
        | "MissingParameter"
        | "InvalidUserData.Malformed" => Kind::Config,
        _ if matches!(
            family,
            "InvalidAMIID"
                | "InvalidKeyPair"
                | "InvalidSubnetID"
                | "InvalidSubnet"
                | "InvalidGroup"
                | "InvalidSecurityGroupID"
                | "InvalidInstanceType"
                | "InvalidBlockDeviceMapping"
        ) =>
        {
            Kind::Config
        }
        _ if status == 401 || status == 403 => Kind::Config,
        _ if status >= 500 => Kind::Unanswered,
        _ => Kind::Other,
    }
}

/// Maps a failed call to the backend error taxonomy; `context` is "failed to …". No
/// usable answer (a transport failure, a timeout, an unreadable reply) and server errors
/// (5xx, no code kpool knows) are Unanswered: EC2 may have acted on the call.
pub fn map_error(context: &str, err: CallError) -> BackendError {
    let CallError::Api { status, code, retry_after, .. } = &err else {
        return BackendError::Unanswered(format!("{context}: {err}"));
    };
    let message = format!("{context}: {err}");
    match classify(*status, code) {
        Kind::NotFound => BackendError::NotFound(message),
        Kind::Capacity => BackendError::InsufficientCapacity(message),
        Kind::Throttled => BackendError::RateLimited { message, retry_after: *retry_after },
        Kind::Config if code.starts_with("InvalidAMIID") => {
            BackendError::InvalidConfig(format!("{message} (check image_id: the AMI must exist in every region)"))
        }
        Kind::Config => BackendError::InvalidConfig(message),
        Kind::Unanswered => BackendError::Unanswered(message),
        Kind::Other => BackendError::Other(message),
    }
}
