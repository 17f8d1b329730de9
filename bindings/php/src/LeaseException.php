<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * A lease that cannot be released: released already, acquired by
 * another process (before a fork), or released by a reaper or km_close
 * meanwhile (ESTALE).
 */
class LeaseException extends Exception
{
}
