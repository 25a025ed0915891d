"""ModelRegistry: models and agents, versions, terms, ownership and deprecation."""

from __future__ import annotations

import boa
import pytest

from nodeai.chain.jobs import ZERO_ADDRESS

from .conftest import ARTIFACT_CID, MANIFEST_CID, REVENUE_SHARE_BPS, ONE, last_event, now, warp

SPEC_CID = "bafybeihkoviema7g3gxyt6la7vd5ho32ictqbilu3wnlo3rs7ewhnp7lly"
NEW_ARTIFACT = "bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq"
NEW_MANIFEST = "QmPChd2hVbrJ6bfo3WBcTW4iZnpHm8TEzWkLHmLpXhF68A"
NOT_OWNER = "models: caller is not the model owner"
NOT_REGISTERED = "models: model not registered"
DEPRECATED = "models: model is deprecated"
SHARE_TOO_HIGH = "models: revenue share above MAX_REVENUE_SHARE_BPS"
CID_TOO_SHORT = "models: CID too short"


def register_model(s, who=None, share: int = REVENUE_SHARE_BPS, artifact: str = ARTIFACT_CID, manifest: str = MANIFEST_CID) -> int:
    with boa.env.prank((who or s.publisher).address):
        return s.models.registerModel(artifact, manifest, 7 * ONE // 1000, share)


def register_agent(s, base: int, who=None, share: int = 500, spec: str = SPEC_CID) -> int:
    with boa.env.prank((who or s.requester).address):
        return s.models.registerAgent(spec, base, 3 * ONE // 1000, share)


def model(s, model_id: int) -> tuple:
    return tuple(s.models.models(model_id))


# --- registerModel -----------------------------------------------------------------------------


def test_register_model(suite):
    s = suite
    assert s.models.modelCount() == 1
    model_id = register_model(s, who=s.provider, share=5_000)
    event = last_event(s.models, "ModelRegistered")
    assert model_id == 2 and s.models.modelCount() == 2
    assert model(s, model_id) == (s.provider.address, 0, 0, 1, 7 * ONE // 1000, 5_000, False)
    assert (s.models.artifactCid(model_id), s.models.manifestCid(model_id)) == (ARTIFACT_CID, MANIFEST_CID)
    assert event == {
        "address": event["address"], "modelId": 2, "owner": s.provider.address, "kind": 0, "baseModelId": 0,
        "artifactCid": ARTIFACT_CID, "manifestCid": MANIFEST_CID, "pricePer1kTokens": 7 * ONE // 1000,
        "revenueShareBps": 5_000,
    }  # fmt: skip
    assert tuple(s.models.modelTerms(model_id)) == (s.provider.address, 5_000, True)


def test_register_model_above_the_share_cap_reverts(suite):
    s = suite
    with boa.reverts(SHARE_TOO_HIGH):
        register_model(s, share=5_001)
    assert s.models.modelCount() == 1


@pytest.mark.parametrize("which", ["artifact", "manifest"])
def test_register_model_with_a_short_cid_reverts(suite, which):
    s = suite
    kwargs = {which: "Qm12345678"[:9]}
    with boa.reverts(CID_TOO_SHORT):
        register_model(s, **kwargs)
    with boa.reverts(CID_TOO_SHORT):
        register_model(s, **{which: ""})
    # exactly 10 characters is the shortest accepted
    assert register_model(s, **{which: "Qm12345678"}) == 2


# --- registerAgent -----------------------------------------------------------------------------


def test_register_agent(suite):
    s = suite
    agent_id = register_agent(s, s.model_id)
    event = last_event(s.models, "ModelRegistered")
    assert agent_id == 2
    assert model(s, agent_id) == (s.requester.address, 1, s.model_id, 1, 3 * ONE // 1000, 500, False)
    assert (s.models.artifactCid(agent_id), s.models.manifestCid(agent_id)) == (SPEC_CID, "")
    assert (event["kind"], event["baseModelId"], event["artifactCid"], event["manifestCid"]) == (1, s.model_id, SPEC_CID, "")
    assert tuple(s.models.modelTerms(agent_id)) == (s.requester.address, 500, True)


@pytest.mark.parametrize("base", [0, 2, 999])
def test_register_agent_on_a_missing_base_model_reverts(suite, base):
    with boa.reverts("models: base model not registered"):
        register_agent(suite, base)


def test_register_agent_on_an_agent_reverts(suite):
    s = suite
    agent_id = register_agent(s, s.model_id)
    with boa.reverts("models: base model not registered"):
        register_agent(s, agent_id)


def test_register_agent_on_a_deprecated_model_reverts(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.deprecate(s.model_id)
    with boa.reverts("models: base model is deprecated"):
        register_agent(s, s.model_id)


def test_register_agent_checks_cid_and_share(suite):
    s = suite
    with boa.reverts(CID_TOO_SHORT):
        register_agent(s, s.model_id, spec="bafy")
    with boa.reverts(SHARE_TOO_HIGH):
        register_agent(s, s.model_id, share=5_001)
    assert register_agent(s, s.model_id, share=5_000) == 2


# --- publishVersion ----------------------------------------------------------------------------


def test_publish_version(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.publishVersion(s.model_id, NEW_ARTIFACT, NEW_MANIFEST)
        event = last_event(s.models, "ModelVersionPublished")
        s.models.publishVersion(s.model_id, ARTIFACT_CID, MANIFEST_CID)
    assert event == {
        "address": event["address"], "modelId": s.model_id, "version": 2, "artifactCid": NEW_ARTIFACT,
        "manifestCid": NEW_MANIFEST,
    }  # fmt: skip
    assert s.models.models(s.model_id).version == 3
    assert (s.models.artifactCid(s.model_id), s.models.manifestCid(s.model_id)) == (ARTIFACT_CID, MANIFEST_CID)


def test_publish_version_of_an_agent_needs_no_manifest(suite):
    s = suite
    agent_id = register_agent(s, s.model_id)
    with boa.env.prank(s.requester.address):
        s.models.publishVersion(agent_id, NEW_ARTIFACT, "")
    assert s.models.models(agent_id).version == 2
    assert s.models.artifactCid(agent_id) == NEW_ARTIFACT
    with boa.reverts(CID_TOO_SHORT):
        with boa.env.prank(s.requester.address):
            s.models.publishVersion(agent_id, "short", "")


def test_publish_version_of_a_model_needs_a_manifest(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        with boa.reverts(CID_TOO_SHORT):
            s.models.publishVersion(s.model_id, NEW_ARTIFACT, "")
        with boa.reverts(CID_TOO_SHORT):
            s.models.publishVersion(s.model_id, "Qm", NEW_MANIFEST)
    assert s.models.models(s.model_id).version == 1


def test_publish_version_by_anyone_else_reverts(suite):
    s = suite
    with boa.reverts(NOT_OWNER):
        with boa.env.prank(s.provider.address):
            s.models.publishVersion(s.model_id, NEW_ARTIFACT, NEW_MANIFEST)
    with boa.reverts(NOT_REGISTERED):
        with boa.env.prank(s.provider.address):
            s.models.publishVersion(999, NEW_ARTIFACT, NEW_MANIFEST)


def test_publish_version_of_a_deprecated_model_reverts(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.deprecate(s.model_id)
        with boa.reverts(DEPRECATED):
            s.models.publishVersion(s.model_id, NEW_ARTIFACT, NEW_MANIFEST)


# --- setTerms ----------------------------------------------------------------------------------


def test_set_terms(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.setTerms(s.model_id, 9, 5_000)
    event = last_event(s.models, "ModelTermsChanged")
    effective_at = now() + 7 * 86_400
    assert (event["modelId"], event["pricePer1kTokens"], event["revenueShareBps"], event["shareEffectiveAt"]) == (
        s.model_id, 9, 5_000, effective_at
    )
    # NOTE: a share increase is announced, not applied: providers can redeem what they earned first.
    assert (s.models.models(s.model_id).pricePer1kTokens, s.models.models(s.model_id).revenueShareBps) == (9, REVENUE_SHARE_BPS)
    assert tuple(s.models.pendingRevenueShare(s.model_id)) == (5_000, effective_at)
    assert tuple(s.models.modelTerms(s.model_id)) == (s.publisher.address, REVENUE_SHARE_BPS, True)
    warp(7 * 86_400 - 1)
    assert s.models.modelTerms(s.model_id)[1] == REVENUE_SHARE_BPS
    warp(1)
    assert tuple(s.models.modelTerms(s.model_id)) == (s.publisher.address, 5_000, True)
    assert tuple(s.models.pendingRevenueShare(s.model_id)) == (0, 0)
    with boa.env.prank(s.publisher.address):
        s.models.setTerms(s.model_id, 0, 0)
    assert tuple(s.models.modelTerms(s.model_id)) == (s.publisher.address, 0, True)


def test_set_terms_above_the_share_cap_reverts(suite):
    s = suite
    with boa.reverts(SHARE_TOO_HIGH):
        with boa.env.prank(s.publisher.address):
            s.models.setTerms(s.model_id, 9, 5_001)
    assert s.models.models(s.model_id).revenueShareBps == REVENUE_SHARE_BPS


def test_set_terms_by_anyone_else_reverts(suite):
    s = suite
    with boa.reverts(NOT_OWNER):
        with boa.env.prank(s.provider.address):
            s.models.setTerms(s.model_id, 9, 0)
    with boa.reverts(NOT_REGISTERED):
        with boa.env.prank(s.publisher.address):
            s.models.setTerms(0, 9, 0)


# --- transferModelOwnership --------------------------------------------------------------------


def test_transfer_model_ownership(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.transferModelOwnership(s.model_id, s.requester.address)
    event = last_event(s.models, "ModelOwnershipTransferred")
    assert (event["modelId"], event["previousOwner"], event["newOwner"]) == (s.model_id, s.publisher.address, s.requester.address)
    assert s.models.modelTerms(s.model_id)[0] == s.requester.address
    # the new owner acts, the old one no longer may
    with boa.env.prank(s.requester.address):
        s.models.setTerms(s.model_id, 1, 1)
    with boa.reverts(NOT_OWNER):
        with boa.env.prank(s.publisher.address):
            s.models.setTerms(s.model_id, 1, 1)


def test_transfer_model_ownership_to_zero_reverts(suite):
    s = suite
    with boa.reverts("models: new owner is the zero address"):
        with boa.env.prank(s.publisher.address):
            s.models.transferModelOwnership(s.model_id, ZERO_ADDRESS)


def test_transfer_model_ownership_by_anyone_else_reverts(suite):
    s = suite
    with boa.reverts(NOT_OWNER):
        with boa.env.prank(s.requester.address):
            s.models.transferModelOwnership(s.model_id, s.requester.address)
    with boa.reverts(NOT_REGISTERED):
        with boa.env.prank(s.requester.address):
            s.models.transferModelOwnership(42, s.requester.address)
    assert s.models.modelTerms(s.model_id)[0] == s.publisher.address


# --- deprecate ---------------------------------------------------------------------------------


def test_deprecate(suite):
    s = suite
    agent_id = register_agent(s, s.model_id)
    with boa.env.prank(s.publisher.address):
        s.models.deprecate(s.model_id)
    assert last_event(s.models, "ModelDeprecated")["modelId"] == s.model_id
    assert s.models.models(s.model_id).deprecated
    assert tuple(s.models.modelTerms(s.model_id)) == (s.publisher.address, REVENUE_SHARE_BPS, False)
    # an agent already running on it is untouched
    assert tuple(s.models.modelTerms(agent_id)) == (s.requester.address, 500, True)


def test_deprecate_twice_reverts(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.deprecate(s.model_id)
        with boa.reverts(DEPRECATED):
            s.models.deprecate(s.model_id)


def test_deprecate_by_anyone_else_reverts(suite):
    s = suite
    with boa.reverts(NOT_OWNER):
        with boa.env.prank(s.provider.address):
            s.models.deprecate(s.model_id)
    with boa.reverts(NOT_REGISTERED):
        with boa.env.prank(s.provider.address):
            s.models.deprecate(7)
    assert s.models.modelTerms(s.model_id)[2]


# --- modelTerms --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", [0, 2, 2**256 - 1])
def test_model_terms_of_an_unknown_id(suite, model_id):
    assert tuple(suite.models.modelTerms(model_id)) == (ZERO_ADDRESS, 0, False)


def test_ids_are_sequential_across_models_and_agents(suite):
    s = suite
    ids = [register_model(s), register_agent(s, s.model_id), register_model(s, who=s.provider2)]
    assert ids == [2, 3, 4] and s.models.modelCount() == 4
    assert [s.models.models(i).kind for i in ids] == [0, 1, 0]


def test_share_decrease_applies_at_once_and_cancels_an_announced_increase(suite):
    s = suite
    with boa.env.prank(s.publisher.address):
        s.models.setTerms(s.model_id, 9, 4_000)
        s.models.setTerms(s.model_id, 9, 500)
    assert last_event(s.models, "ModelTermsChanged")["shareEffectiveAt"] == now()
    assert s.models.modelTerms(s.model_id)[1] == 500
    assert tuple(s.models.pendingRevenueShare(s.model_id)) == (0, 0)
    warp(8 * 86_400)
    assert s.models.modelTerms(s.model_id)[1] == 500  # the cancelled increase never applies


def test_an_owner_cannot_raise_its_cut_of_vouchers_already_earned(suite):
    """Regression: the escrow reads the share at redemption, so an owner raising
    it just before a provider redeems used to take up to half of the provider's pay."""
    s = suite
    from nodeai.chain.vouchers import Voucher, sign_voucher

    with boa.env.prank(s.payer.address):
        s.escrow.deposit(s.provider.address, 10 * ONE)
    v = Voucher(s.payer.address, s.provider.address, s.model_id, 10 * ONE, now() + 86_400)
    sig = sign_voucher(v, s.payer.key, boa.env.evm.patch.chain_id, s.escrow.address)
    with boa.env.prank(s.publisher.address):
        s.models.setTerms(s.model_id, 0, 5_000)
    publisher_before = s.token.balanceOf(s.publisher.address)
    with boa.env.prank(s.provider.address):
        s.escrow.redeem(v.as_tuple(), sig)
    assert s.token.balanceOf(s.publisher.address) - publisher_before == 10 * ONE * REVENUE_SHARE_BPS // 10_000
