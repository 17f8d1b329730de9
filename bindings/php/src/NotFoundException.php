<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * No pool (ENOPOOL), key (ENOKEY) or model (ENOMODEL) of that name.
 */
class NotFoundException extends Exception
{
}
