<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * No key can become usable without an operator: all disabled, invalid
 * (401/403) or exhausted (quota) (EUNAVAIL), or the pool's hard budget is
 * spent (EBUDGET).  A NoKeyAvailableException, so code that catches that
 * one catches this too; waiting does not help.
 */
class KeysExhaustedException extends NoKeyAvailableException
{
}
