# pragma version ~=0.4.3
"""
@title Test token
@custom:contract-name TestToken
@notice The ERC-20 payment token for local chains and tests (6 decimals,
        like USDC). The deployer is a minter; minters can mint to anyone.
@dev snekmate's audited ERC-20 (with EIP-2612 permit), exported whole.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]
exports: erc20.__interface__


@deploy
def __init__(name_: String[25], symbol_: String[5], decimals_: uint8):
    """
    @param name_ Token name, also the EIP-712 name for permits.
    @param symbol_ Token symbol.
    @param decimals_ Decimals (6 for a USDC stand-in).
    """
    ownable.__init__()
    erc20.__init__(name_, symbol_, decimals_, name_, "1")
