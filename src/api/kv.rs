//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact (and the 3.7 RangeStream).

use std::pin::Pin;

use futures::Stream;
use prost::Message;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::ApiContext;
use super::convert;
use super::error::ApiError;
use super::metadata;
use crate::pb::etcdserverpb as etcd;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::kv_server::KvServer;
use crate::types::AlarmKind;
use crate::types::Command;
use crate::types::CommandOutput;
use crate::types::CommandResponse;
use crate::types::KvError;
use crate::types::SortOrder;
use crate::types::SortTarget;

/// kvs per message of a streamed range.
const RANGE_STREAM_KVS_PER_MESSAGE: usize = 1000;

pub struct KvService {
    context: ApiContext,
}

impl KvService {
    pub fn new(context: ApiContext) -> Self {
        KvService { context }
    }

    pub fn into_server(self, decode_bytes_max: usize) -> KvServer<Self> {
        KvServer::new(self)
            .max_decoding_message_size(decode_bytes_max)
            .max_encoding_message_size(usize::MAX)
    }

    async fn range(
        &self,
        request: &etcd::RangeRequest,
        min_revision: Option<i64>,
    ) -> Result<etcd::RangeResponse, ApiError> {
        check_size(request, self.context.max_request_bytes)?;
        let op = convert::range_op(request)?;
        if !request.serializable {
            self.context.consensus.read_barrier().await?;
        }
        if let Some(wanted) = min_revision {
            self.context.wait_for_revision(wanted).await?;
        }
        let (result, revision) = self.context.reader.range(&op)?;
        Ok(convert::range_response(
            result,
            self.context.header(revision),
        ))
    }

    /// Proposes a client write, numbered when the request's metadata says so (exactly-once).
    async fn propose<T>(
        &self,
        request: &Request<T>,
        command: Command,
    ) -> Result<(CommandOutput, i64), ApiError> {
        if command.may_add_data() {
            self.check_space().await?;
        }
        let command = match metadata::numbered_write(request.metadata())? {
            Some(write) => Command::Numbered {
                write,
                command: Box::new(command),
            },
            None => command,
        };
        let written = self.context.consensus.write(command).await;
        match &written {
            Ok(_) => self.context.metrics.proposals_committed.inc(),
            Err(_) => self.context.metrics.proposals_failed.inc(),
        };
        let CommandResponse { revision, result } = written?;
        if self.context.faults.take_dropped_write_response() {
            tracing::warn!(
                revision,
                "fault injection: dropping the response of an applied write"
            );
            return Err(ApiError::ResponseDropped);
        }
        Ok((result?, revision))
    }
}

impl KvService {
    /// etcd's quota check before a write that may add data: past the quota, this member raises
    /// its NOSPACE alarm (once) and the write is refused, as every write that adds data is while
    /// the alarm stands.
    async fn check_space(&self) -> Result<(), ApiError> {
        let size = self.context.reader.db_size_bytes_recent();
        if size <= self.context.quota_backend_bytes {
            return Ok(());
        }
        let member = self.context.member_id();
        if !self
            .context
            .reader
            .alarms()
            .is_raised(member, AlarmKind::NoSpace)
        {
            tracing::warn!(
                size,
                quota = self.context.quota_backend_bytes,
                "database space exceeded: raising the NOSPACE alarm"
            );
            self.context
                .consensus
                .write(Command::Alarm {
                    activate: true,
                    member,
                    alarm: AlarmKind::NoSpace,
                })
                .await?;
        }
        Err(ApiError::Kv(KvError::NoSpace))
    }
}

fn check_size<M: Message>(request: &M, max_request_bytes: usize) -> Result<(), ApiError> {
    if request.encoded_len() > max_request_bytes {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(())
}

fn unexpected(output: CommandOutput) -> Status {
    Status::internal(format!(
        "state machine answered with the wrong kind of result: {output:?}"
    ))
}

type RangeStream = Pin<Box<dyn Stream<Item = Result<etcd::RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<etcd::RangeRequest>,
    ) -> Result<Response<etcd::RangeResponse>, Status> {
        let min_revision = metadata::min_revision(request.metadata())?;
        Ok(Response::new(
            KvService::range(self, request.get_ref(), min_revision).await?,
        ))
    }

    async fn put(
        &self,
        request: Request<etcd::PutRequest>,
    ) -> Result<Response<etcd::PutResponse>, Status> {
        check_size(request.get_ref(), self.context.max_request_bytes)?;
        let op = convert::put_op(request.get_ref())?;
        match self.propose(&request, Command::Put(op)).await? {
            (CommandOutput::Put { prev_kv }, revision) => Ok(Response::new(etcd::PutResponse {
                header: Some(self.context.header(revision)),
                prev_kv: prev_kv.map(convert::key_value),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<etcd::DeleteRangeRequest>,
    ) -> Result<Response<etcd::DeleteRangeResponse>, Status> {
        check_size(request.get_ref(), self.context.max_request_bytes)?;
        let op = convert::delete_op(request.get_ref())?;
        match self.propose(&request, Command::Delete(op)).await? {
            (CommandOutput::Delete { deleted, prev_kvs }, revision) => {
                Ok(Response::new(etcd::DeleteRangeResponse {
                    header: Some(self.context.header(revision)),
                    deleted,
                    prev_kvs: prev_kvs.into_iter().map(convert::key_value).collect(),
                }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn txn(
        &self,
        request: Request<etcd::TxnRequest>,
    ) -> Result<Response<etcd::TxnResponse>, Status> {
        check_size(request.get_ref(), self.context.max_request_bytes)?;
        let op = convert::txn_op(request.get_ref(), self.context.max_txn_ops)?;
        match self.propose(&request, Command::Txn(op)).await? {
            (CommandOutput::Txn(result), revision) => Ok(Response::new(convert::txn_response(
                result,
                self.context.header(revision),
            ))),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<etcd::CompactionRequest>,
    ) -> Result<Response<etcd::CompactionResponse>, Status> {
        let revision = request.get_ref().revision;
        // Compaction runs synchronously in the state machine, so `physical` is always honoured.
        match self
            .propose(&request, Command::Compact { revision })
            .await?
        {
            (CommandOutput::Compact, current) => Ok(Response::new(etcd::CompactionResponse {
                header: Some(self.context.header(current)),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    type RangeStreamStream = RangeStream;

    /// etcd 3.7's streamed range: the same result as Range, in slices; header, more and count
    /// only on the last message. Custom sorts and revision filters are refused, as etcd does.
    async fn range_stream(
        &self,
        request: Request<etcd::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let min_revision = metadata::min_revision(request.metadata())?;
        let request = request.into_inner();
        let custom_sort = convert::range_op(&request).map(|op| {
            !(matches!(op.sort_order, SortOrder::None | SortOrder::Ascend)
                && op.sort_target == SortTarget::Key)
        })?;
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        if custom_sort || filtered {
            return Err(ApiError::RangeStreamUnsupported.into());
        }
        let mut whole = KvService::range(self, &request, min_revision).await?;
        let kvs = std::mem::take(&mut whole.kvs);
        let mut messages: Vec<Result<etcd::RangeStreamResponse, Status>> = kvs
            .chunks(RANGE_STREAM_KVS_PER_MESSAGE)
            .map(|slice| {
                Ok(etcd::RangeStreamResponse {
                    range_response: Some(etcd::RangeResponse {
                        kvs: slice.to_vec(),
                        ..Default::default()
                    }),
                })
            })
            .collect();
        match messages.last_mut() {
            Some(Ok(last)) => {
                let last = last.range_response.as_mut().expect("set above");
                last.header = whole.header;
                last.more = whole.more;
                last.count = whole.count;
            }
            _ => messages.push(Ok(etcd::RangeStreamResponse {
                range_response: Some(whole),
            })),
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }
}
