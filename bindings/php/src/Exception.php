<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * Every failure of the binding.  getCode() is the C library's negative
 * KM_E* code (the constants below, keymesh.h's values); $errname its name
 * ("EAGAIN").  The subclasses group the codes by what a caller does next:
 *
 *   SegmentException         the segment: missing (ENOENT), exists (EEXIST),
 *                            no permission, not KeyMesh's, another format or
 *                            layout, process table full, ...
 *   NotFoundException        no pool, key or model of that name
 *   NoKeyAvailableException  no key now (EAGAIN) or within the timeout
 *                            (ETIMEDOUT); $retryAfter when KeyMesh knows
 *     KeysExhaustedException none can become usable without an operator
 *                            (EUNAVAIL), or the hard budget is spent (EBUDGET)
 *   InvalidArgumentException a bad argument (EINVAL), or a token estimate
 *                            above a limit's burst on every key (ECOST)
 *   LeaseException           a lease released twice, by another process, or
 *                            already reaped (ESTALE)
 *   ConfigException          a configuration the library refuses (ECONFIG)
 *
 * Messages never contain a secret.
 */
class Exception extends \RuntimeException
{
    public const EINVAL = -1;
    public const ENOMEM = -2;
    public const ESYS = -3;
    public const ENOENT = -4;
    public const EEXIST = -5;
    public const EACCES = -6;
    public const ENOTKM = -7;
    public const EFORMAT = -8;
    public const ELAYOUT = -9;
    public const ETRUNC = -10;
    public const ENOTREADY = -11;
    public const ECONFIG = -12;
    public const ENOPOOL = -13;
    public const ENOKEY = -14;
    public const EAGAIN = -15;
    public const EUNAVAIL = -16;
    public const ECOST = -17;
    public const ESTALE = -18;
    public const EPROCS = -19;
    public const ENAME = -20;
    public const ECORRUPT = -21;
    public const ENOMODEL = -22;
    public const EBUDGET = -23;
    public const ETIMEDOUT = -24;
    public const EBUSY = -25;
    public const EKEYEXISTS = -26;
    public const EFULL = -27;
    public const ECRYPTO = -28;
    public const ENOSLOT = -29;
    public const EREADONLY = -30;
    public const EDUPSECRET = -31;

    /** The code's name without prefix ("EAGAIN"); "" for the binding's own errors. */
    public readonly string $errname;

    public function __construct(string $message, int $code = 0, string $errname = '', ?\Throwable $previous = null)
    {
        parent::__construct($message, $code, $previous);
        $this->errname = $errname;
    }
}
