<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * A configuration the library refuses (ECONFIG); the message names the
 * field, or the line and column.
 */
class ConfigException extends Exception
{
}
