"""STS's GetCallerIdentity: who the caller is, as AWS tools ask before they name things after the account.

The SageMaker Python SDK asks it to build its default bucket's name (``sagemaker-{region}-{account}``)
when its config names none, and ``aws sts get-caller-identity`` is how people check that a key works.
moorage has one account (``Settings.account_id``) and its keys are that account's root keys, so the
answer is the account's root identity, as AWS gives it for root keys.
"""

from __future__ import annotations

from typing import Any

from moorage.control.context import Context


class SecurityTokenService:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def get_caller_identity(self, req: dict[str, Any]) -> dict[str, Any]:
        account = self.ctx.settings.account_id
        return {"UserId": account, "Account": account, "Arn": f"arn:aws:iam::{account}:root"}
