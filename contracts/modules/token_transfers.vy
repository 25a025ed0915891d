"""
@title Token transfers
@custom:contract-name token_transfers
@notice Stateless helpers that move ERC-20 tokens and revert with a clear,
        prefixed message when the token refuses.
@dev Tokens that return nothing (USDT style) are accepted through
     `default_return_value=True`; tokens that return `False` revert here.
"""

from ethereum.ercs import IERC20


@internal
def _pull(token: IERC20, payer: address, amount: uint256):
    """
    @dev Takes `amount` from `payer` into this contract (allowance needed).
    """
    assert extcall token.transferFrom(payer, self, amount, default_return_value=True), "transfers: transferFrom failed"


@internal
def _push(token: IERC20, recipient: address, amount: uint256):
    """
    @dev Sends `amount` to `recipient`; a zero amount is skipped to save gas.
    """
    if amount == 0:
        return
    assert extcall token.transfer(recipient, amount, default_return_value=True), "transfers: transfer failed"
