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
    InvalidTransactionTimeout = 50,
    InvalidConfig = 40,
    KafkaStorageError = 56,
    FetchSessionIdNotFound = 70,
    UnknownTopicId = 100,
    InvalidRecord = 87,
    InvalidReplicaAssignment = 39,
    NoReassignmentInProgress = 85,
    UnknownServerError = -1,
}

impl ErrorCode {
    pub fn code(self) -> i16 {
        self as i16
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
