<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * A bad argument: the library's EINVAL, a token estimate above a
 * limit's burst on every key (ECOST), or one the binding refuses before
 * calling it (a negative token estimate: code EINVAL).
 */
class InvalidArgumentException extends Exception
{
}
