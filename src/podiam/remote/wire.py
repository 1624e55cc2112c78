"""
podiam's values to and from the stream's protobuf messages (podiam.proto), in one place.

A decision crosses as the identity itself or as a refusal's reason label and message;
``decision.error_for`` turns the latter back into the podiam error that answers exactly as
agent mode would. Messages holding credentials are secret: nothing here logs or formats one.
"""

from __future__ import annotations

import datetime as dt

from podiam.credentials import Credentials, Identity
from podiam.decision import error_for, refusal
from podiam.errors import CredentialsError, IdentityError, PodiamError
from podiam.pods import PodEntry, PodInfo
from podiam.remote import podiam_pb2 as pb


def identity_to_wire(identity: Identity) -> pb.Identity:
    return pb.Identity(role_arn=identity.role_arn, session_name=identity.session_name,
                       external_id=identity.external_id,
                       session_tags=[pb.Tag(key=k, value=v) for k, v in identity.session_tags])


def identity_from_wire(message: pb.Identity) -> Identity:
    return Identity(role_arn=message.role_arn, session_name=message.session_name,
                    external_id=message.external_id if message.HasField("external_id") else None,
                    session_tags=tuple((t.key, t.value) for t in message.session_tags))


def refusal_to_wire(error: PodiamError) -> pb.Refusal:
    r = refusal(error)
    return pb.Refusal(reason=r.reason, message=r.message)


def credentials_to_wire(creds: Credentials) -> pb.Credentials:
    return pb.Credentials(access_key_id=creds.access_key_id, secret_access_key=creds.secret_access_key,
                          session_token=creds.session_token, expiration=int(creds.expiration.timestamp()),
                          last_updated=int(creds.last_updated.timestamp()))


def credentials_from_wire(message: pb.Credentials) -> Credentials:
    return Credentials(access_key_id=message.access_key_id, secret_access_key=message.secret_access_key,
                       session_token=message.session_token,
                       expiration=dt.datetime.fromtimestamp(message.expiration, dt.UTC),
                       last_updated=dt.datetime.fromtimestamp(message.last_updated, dt.UTC))


def outcome_to_wire(identity: Identity, outcome: Credentials | CredentialsError) -> pb.IdentityCredentials:
    if isinstance(outcome, Credentials):
        return pb.IdentityCredentials(identity=identity_to_wire(identity), credentials=credentials_to_wire(outcome))
    return pb.IdentityCredentials(identity=identity_to_wire(identity), failure=refusal_to_wire(outcome))


def outcome_from_wire(message: pb.IdentityCredentials) -> tuple[Identity, Credentials | CredentialsError]:
    identity = identity_from_wire(message.identity)
    if message.HasField("credentials"):
        return identity, credentials_from_wire(message.credentials)
    error = error_for(message.failure.reason, message.failure.message)
    return identity, error if isinstance(error, CredentialsError) else CredentialsError(message.failure.message)


def entry_to_wire(entry: PodEntry) -> pb.Pod:
    pod = entry.pod
    message = pb.Pod(uid=pod.uid, namespace=pod.namespace, name=pod.name, ip=pod.ip or "",
                     service_account=pod.service_account)
    if entry.identity is not None:
        message.identity.CopyFrom(identity_to_wire(entry.identity))
    else:
        assert entry.problem is not None
        message.refusal.CopyFrom(refusal_to_wire(entry.problem))
    return message


def pod_from_wire(message: pb.Pod, node: str) -> tuple[PodInfo, Identity | IdentityError]:
    """The pod as the agent's index holds it, and its decision (an identity, or the error)."""
    pod = PodInfo(namespace=message.namespace, name=message.name, uid=message.uid, ip=message.ip or None,
                  service_account=message.service_account if message.HasField("service_account") else None,
                  node=node)
    if message.HasField("identity"):
        return pod, identity_from_wire(message.identity)
    error = error_for(message.refusal.reason, message.refusal.message)
    return pod, error if isinstance(error, IdentityError) else IdentityError(message.refusal.message)
