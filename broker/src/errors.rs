//! Kafka error codes, in one place. Every refusal the broker gives a client
//! is one of these; handlers never write a bare number.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum ErrorCode {
    None = 0,
    OffsetOutOfRange = 1,
    CorruptMessage = 2,
    UnknownTopicOrPartition = 3,
    InvalidFetchSize = 4,
    LeaderNotAvailable = 5,
    NotLeaderOrFollower = 6,
    RequestTimedOut = 7,
    MessageTooLarge = 10,
    // Group coordinator.
    OffsetMetadataTooLarge = 12,
    CoordinatorLoadInProgress = 14,
    CoordinatorNotAvailable = 15,
    NotCoordinator = 16,
    IllegalGeneration = 22,
    InconsistentGroupProtocol = 23,
    InvalidGroupId = 24,
    UnknownMemberId = 25,
    InvalidSessionTimeout = 26,
    RebalanceInProgress = 27,
    NonEmptyGroup = 68,
    GroupIdNotFound = 69,
    MemberIdRequired = 79,
    GroupMaxSizeReached = 81,
    FencedInstanceId = 82,
    GroupSubscribedToTopic = 86,
    UnstableOffsetCommit = 88,
    FencedMemberEpoch = 110,
    UnreleasedInstanceId = 111,
    UnsupportedAssignor = 112,
    StaleMemberEpoch = 113,
    InvalidRegularExpression = 128,
    InvalidTopicException = 17,
    RecordListTooLarge = 18,
    InvalidRequiredAcks = 21,
    UnsupportedVersion = 35,
    TopicAlreadyExists = 36,
    InvalidPartitions = 37,
    InvalidReplicationFactor = 38,
    InvalidRequest = 42,
    UnsupportedForMessageFormat = 43,
    PolicyViolation = 44,
    OutOfOrderSequenceNumber = 45,
    DuplicateSequenceNumber = 46,
    InvalidProducerEpoch = 47,
    InvalidTxnState = 48,
    InvalidProducerIdMapping = 49,
    InvalidTransactionTimeout = 50,
    ConcurrentTransactions = 51,
    TransactionCoordinatorFenced = 52,
    TransactionalIdAuthorizationFailed = 53,
    OperationNotAttempted = 55,
    ProducerFenced = 90,
    TransactionalIdNotFound = 105,
    TransactionAbortable = 120,
    InvalidConfig = 40,
    KafkaStorageError = 56,
    NotEnoughReplicas = 19,
    FetchSessionIdNotFound = 70,
    UnknownTopicId = 100,
    InvalidRecord = 87,
    InvalidReplicaAssignment = 39,
    NoReassignmentInProgress = 85,
    UnknownServerError = -1,
}

/// Every code above, for decoding.
const ALL: &[ErrorCode] = &[
    ErrorCode::None,
    ErrorCode::OffsetOutOfRange,
    ErrorCode::CorruptMessage,
    ErrorCode::UnknownTopicOrPartition,
    ErrorCode::InvalidFetchSize,
    ErrorCode::LeaderNotAvailable,
    ErrorCode::NotLeaderOrFollower,
    ErrorCode::RequestTimedOut,
    ErrorCode::MessageTooLarge,
    ErrorCode::OffsetMetadataTooLarge,
    ErrorCode::CoordinatorLoadInProgress,
    ErrorCode::CoordinatorNotAvailable,
    ErrorCode::NotCoordinator,
    ErrorCode::IllegalGeneration,
    ErrorCode::InconsistentGroupProtocol,
    ErrorCode::InvalidGroupId,
    ErrorCode::UnknownMemberId,
    ErrorCode::InvalidSessionTimeout,
    ErrorCode::RebalanceInProgress,
    ErrorCode::NonEmptyGroup,
    ErrorCode::GroupIdNotFound,
    ErrorCode::MemberIdRequired,
    ErrorCode::GroupMaxSizeReached,
    ErrorCode::FencedInstanceId,
    ErrorCode::GroupSubscribedToTopic,
    ErrorCode::UnstableOffsetCommit,
    ErrorCode::FencedMemberEpoch,
    ErrorCode::UnreleasedInstanceId,
    ErrorCode::UnsupportedAssignor,
    ErrorCode::StaleMemberEpoch,
    ErrorCode::InvalidRegularExpression,
    ErrorCode::InvalidTopicException,
    ErrorCode::RecordListTooLarge,
    ErrorCode::InvalidRequiredAcks,
    ErrorCode::UnsupportedVersion,
    ErrorCode::TopicAlreadyExists,
    ErrorCode::InvalidPartitions,
    ErrorCode::InvalidReplicationFactor,
    ErrorCode::InvalidRequest,
    ErrorCode::UnsupportedForMessageFormat,
    ErrorCode::PolicyViolation,
    ErrorCode::OutOfOrderSequenceNumber,
    ErrorCode::DuplicateSequenceNumber,
    ErrorCode::InvalidProducerEpoch,
    ErrorCode::InvalidTxnState,
    ErrorCode::InvalidProducerIdMapping,
    ErrorCode::InvalidTransactionTimeout,
    ErrorCode::ConcurrentTransactions,
    ErrorCode::TransactionCoordinatorFenced,
    ErrorCode::TransactionalIdAuthorizationFailed,
    ErrorCode::OperationNotAttempted,
    ErrorCode::ProducerFenced,
    ErrorCode::TransactionalIdNotFound,
    ErrorCode::TransactionAbortable,
    ErrorCode::InvalidConfig,
    ErrorCode::KafkaStorageError,
    ErrorCode::NotEnoughReplicas,
    ErrorCode::FetchSessionIdNotFound,
    ErrorCode::UnknownTopicId,
    ErrorCode::InvalidRecord,
    ErrorCode::InvalidReplicaAssignment,
    ErrorCode::NoReassignmentInProgress,
    ErrorCode::UnknownServerError,
];

impl ErrorCode {
    pub fn code(self) -> i16 {
        self as i16
    }

    /// The code for a number read from a peer's response; unknown numbers
    /// become UNKNOWN_SERVER_ERROR.
    pub fn from_code(code: i16) -> ErrorCode {
        ALL.iter()
            .copied()
            .find(|c| c.code() == code)
            .unwrap_or(ErrorCode::UnknownServerError)
    }

    /// The Kafka code for a batch that failed validation.
    pub fn from_batch_code(code: i16) -> ErrorCode {
        match code {
            43 => ErrorCode::UnsupportedForMessageFormat,
            87 => ErrorCode::InvalidRecord,
            _ => ErrorCode::CorruptMessage,
        }
    }
}
